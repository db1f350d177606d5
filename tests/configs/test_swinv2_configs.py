"""The official SwinV2 configs (configs/swinv2/) build the official models, train through main.py, and SwinV2
weights load across window sizes."""
from __future__ import annotations

import functools
import glob
import json
import os

import pytest
import torch

from configs import get_config
from main import main
from configs.published import published_rows
from models import build_model, count_params
from models.swinv2 import SWINV2_ZOO, SwinTransformerV2, create_swinv2
from models.weights import load_weights
from tests.helpers.processes import records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "swinv2", "*.yaml"))
                 if not os.path.basename(p).startswith("_"))


@functools.lru_cache(maxsize=None)
def _meta_model(path: str) -> torch.nn.Module:
    """The model a config builds, on the meta device (shapes only), built once per config."""
    with torch.device("meta"):
        return build_model(get_config(path))


def test_every_official_swinv2_model_has_its_config():
    assert sorted(os.path.basename(p)[:-5] for p in CONFIGS) == sorted(SWINV2_ZOO)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_each_config_builds_the_official_model(path):
    cfg = get_config(path)
    variant = SWINV2_ZOO[cfg.MODEL.NAME]
    assert (cfg.MODEL.TYPE, cfg.DATA.IMG_SIZE, cfg.MODEL.NUM_CLASSES) == ("swinv2", variant.img_size,
                                                                           variant.num_classes)
    assert tuple(cfg.MODEL.SWINV2.PRETRAINED_WINDOW_SIZES) in ((0, 0, 0, 0), variant.pretrained_window_sizes)
    model = _meta_model(path)
    assert isinstance(model, SwinTransformerV2) and count_params(model) == variant.params
    assert [layer.blocks[0].attn.pretrained_window for layer in model.layers] == [
        (w, w) for w in variant.pretrained_window_sizes]


TINY_V2 = ["MODEL.SWINV2.EMBED_DIM", "16", "MODEL.SWINV2.DEPTHS", "[2, 2]", "MODEL.SWINV2.NUM_HEADS", "[1, 2]",
           "MODEL.SWINV2.WINDOW_SIZE", "4", "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[0, 0]", "DATA.IMG_SIZE", "32",
           "DATA.DATASET", "synthetic", "DATA.SYNTHETIC_TRAIN_SIZE", "8", "DATA.SYNTHETIC_VAL_SIZE", "5",
           "DATA.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0", "MODEL.NUM_CLASSES", "10", "TRAIN.EPOCHS", "1",
           "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1"]


def test_a_swinv2_config_trains_and_evaluates(tmp_path):
    cfg = os.path.join(REPO, "configs", "swinv2", "swinv2_tiny_patch4_window8_256.yaml")
    assert main(["--cfg", cfg, "--device", "cpu", "--output", str(tmp_path), "--tag", "t", "--opts", *TINY_V2]) == 0
    (name,) = os.listdir(tmp_path)  # a smaller architecture than the name's variant: it goes by a custom name
    assert name.startswith("swinv2_custom_patch4_window4_32_")
    run_dir = os.path.join(tmp_path, name, "t")
    assert json.load(open(os.path.join(run_dir, "eval.json")))["num_images"] == 5
    assert [r["step"] for r in records(run_dir, "step")] == [1, 2]


def test_pretrained_window_sizes_must_cover_every_stage():
    with pytest.raises(Exception, match=r"PRETRAINED_WINDOW_SIZES \[12, 12\] needs one entry per stage \(4\)"):
        get_config(opts=["MODEL.TYPE", "swinv2", "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[12, 12]"])


def test_timm_weights_fine_tune_into_another_window_size():
    """22K -> 1K in miniature: weights trained with window 4 (timm's layout) load into a window-8 model that records
    the pre-training windows; nothing is resized (the position bias is an MLP over coordinates)."""
    import timm.models.swin_transformer_v2 as timm_v2

    torch.manual_seed(0)
    src = timm_v2.SwinTransformerV2(img_size=64, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                                    num_classes=20)
    dst = SwinTransformerV2(img_size=128, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=8,
                            num_classes=10, pretrained_window_sizes=(4, 4))
    report = load_weights(dst, src.state_dict(), "finetune")
    assert report.layout == "timm" and report.reinitialized == ["head.weight", "head.bias"] and not report.resized
    cpb = dict(dst.named_parameters())["layers.0.blocks.0.attn.cpb_mlp.0.weight"]
    assert torch.equal(cpb, src.state_dict()["layers.0.blocks.0.attn.cpb_mlp.0.weight"])
    same = create_swinv2("swinv2_tiny_patch4_window8_256", img_size=64, window_size=4, num_classes=20,
                         depths=(2, 2), num_heads=(1, 2), embed_dim=16, pretrained_window_sizes=(0, 0))
    load_weights(same, src.state_dict())  # exact: the same architecture in timm's layout
    src.eval(), same.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(same(x), src(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("row", [r for r in published_rows("release") if r.model.startswith("swinv2")],
                         ids=lambda r: r.model)
def test_parameters_and_flops_equal_the_official_table(row):
    """The official table's GFLOPs to its printed digit (the position-bias MLP, which reads no input, uncounted as
    there) and its parameters in whole millions, of the registered variant the config builds (see
    test_each_config_builds_the_official_model), counted once per process by scripts/model_table.py's zoo_row."""
    from scripts.model_table import zoo_row

    assert get_config(row.config_path).MODEL.NAME == row.model
    counted = zoo_row(row.model)
    assert counted["gflops"] == row.gflops
    assert round(counted["params"] / 1e6) == row.params_m