import hashlib
import os

import pytest
import torch

from configs import get_config
from configs.defaults import get_defaults
from models import SwinTransformer, build_model
from models.build import swin_kwargs
from tests.helpers.data import REPO


def test_default_config_builds_swin_tiny():
    model = build_model(get_config())
    assert isinstance(model, SwinTransformer)
    assert sum(p.numel() for p in model.parameters()) == 28_288_354


def test_every_config_key_reaches_the_model():
    cfg = get_config(opts=[
        "MODEL.NAME", "swin_base_patch4_window12_384_22kto1k_finetune", "DATA.IMG_SIZE", "64",
        "MODEL.NUM_CLASSES", "7", "MODEL.DROP_RATE", "0.1", "MODEL.DROP_PATH_RATE", "0.3",
        "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[2, 2]", "MODEL.SWIN.NUM_HEADS", "[1, 2]",
        "MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.SWIN.APE", "True", "MODEL.SWIN.SHIFT", "False",
        "MODEL.SWIN.REL_POS_BIAS", "False", "MODEL.SWIN.ATTN_IMPL", "sdpa", "TRAIN.USE_CHECKPOINT", "True",
        "MODEL.SWIN.IN_CHANS", "1",
    ])
    kw = swin_kwargs(cfg)
    assert kw["img_size"] == 64 and kw["num_classes"] == 7 and kw["drop_rate"] == 0.1
    assert kw["depths"] == (2, 2) and kw["num_heads"] == (1, 2) and kw["window_size"] == 4
    assert kw["ape"] and not kw["shift"] and not kw["rel_pos_bias"] and kw["use_checkpoint"]
    model = build_model(cfg)  # the name suffix does not matter: the architecture comes from MODEL.SWIN.*
    assert model.head.out_features == 7 and model.absolute_pos_embed.shape == (1, 256, 16)
    assert model.layers[0].use_checkpoint and model.layers[1].blocks[0].drop_path.drop_prob == pytest.approx(0.2)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_attn_impl_auto_follows_the_device():
    cfg = get_config(opts=["MODEL.SWIN.ATTN_IMPL", "auto"])
    assert swin_kwargs(cfg, torch.device("cpu"))["attn_impl"] == "sdpa"
    assert swin_kwargs(cfg, torch.device("cuda"))["attn_impl"] == "sdpa"
    assert swin_kwargs(get_config(opts=["MODEL.SWIN.ATTN_IMPL", "eager"]), torch.device("cuda"))["attn_impl"] == "eager"


def test_timm_type_builds_a_baseline():
    cfg = get_config(opts=["MODEL.TYPE", "timm", "MODEL.NAME", "resnet18", "MODEL.NUM_CLASSES", "10"])
    model = build_model(cfg)
    assert type(model).__name__ == "ResNet" and model.num_classes == 10


def test_unknown_type_is_one_clear_error():
    cfg = get_defaults()  # get_config itself already rejects the value; build_model must too
    cfg.MODEL.TYPE = "vit"
    with pytest.raises(ValueError, match="MODEL.TYPE must be 'swin', 'swinv2', 'pvt' or 'timm', got 'vit'"):
        build_model(cfg)


def test_pvt_type_builds_pvt_v1_and_names_the_sizes_otherwise():
    from models.build import UnknownModelError
    from models.pvt import PyramidVisionTransformer

    cfg = get_config(opts=["MODEL.TYPE", "pvt", "MODEL.NAME", "pvt_tiny", "MODEL.NUM_CLASSES", "10",
                           "DATA.IMG_SIZE", "64"])
    model = build_model(cfg)
    assert isinstance(model, PyramidVisionTransformer) and model.head.out_features == 10
    assert model.patch_embed1.grid == (16, 16)
    cfg = get_config(opts=["MODEL.TYPE", "pvt", "MODEL.NAME", "pvt_v2_b0"])
    with pytest.raises(UnknownModelError, match="'pvt_v2_b0' is not a PVT v1 size .*pvt_tiny, pvt_small"):
        build_model(cfg)


def test_timm_vision_transformers_are_built_for_the_image_size():
    cfg = get_config(opts=["MODEL.TYPE", "timm", "MODEL.NAME", "vit_small_patch16_224_v2020", "DATA.IMG_SIZE", "64",
                           "MODEL.NUM_CLASSES", "10"])
    model = build_model(cfg)
    assert model.patch_embed.img_size == (64, 64) and len(model.blocks) == 8 and model.blocks[0].attn.qkv.bias is None


def test_misspelled_timm_model_is_one_clear_error():
    from models.build import UnknownModelError

    cfg = get_config(opts=["MODEL.TYPE", "timm", "MODEL.NAME", "resnet19"])
    with pytest.raises(UnknownModelError, match=r"'resnet19' is not a timm model .*Did you mean .*resnet18"):
        build_model(cfg)


def test_a_changed_architecture_does_not_go_by_the_variant_name_it_keeps():
    from models import run_name

    assert run_name(get_config()) == ("swin_tiny_patch4_window7_224", [])
    for name in ("swin_base_patch4_window12_384_22kto1k_finetune", "swin_large_patch4_window7_224_22k"):
        cfg = get_config(opts=["MODEL.NAME", name, *_variant_opts(name)])
        assert run_name(cfg) == (name, [])
    tiny = ["MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[1, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 2]"]
    name, changes = run_name(get_config(opts=tiny))
    prefix = "swin_custom_patch4_window7_224_"
    assert name.startswith(prefix) and len(name) == len(prefix) + 6
    assert changes == ["MODEL.SWIN.EMBED_DIM 16 (swin_tiny_patch4_window7_224 has 96)",
                       "MODEL.SWIN.DEPTHS [1, 1] (swin_tiny_patch4_window7_224 has [2, 2, 6, 2])",
                       "MODEL.SWIN.NUM_HEADS [1, 2] (swin_tiny_patch4_window7_224 has [3, 6, 12, 24])"]
    assert run_name(get_config(opts=tiny))[0] == name  # the same architecture, the same run directory
    assert run_name(get_config(opts=tiny + ["MODEL.SWIN.SHIFT", "False"]))[0] != name
    assert run_name(get_config(opts=["MODEL.SWIN.SHIFT", "False"]))[1] == [
        "MODEL.SWIN.SHIFT False (swin_tiny_patch4_window7_224 has True)"]
    # What does not change the network keeps the name: classes, drop rates, checkpointing, the kernel.
    same = ["MODEL.NUM_CLASSES", "10", "MODEL.DROP_PATH_RATE", "0.3", "TRAIN.USE_CHECKPOINT", "True",
            "MODEL.SWIN.ATTN_IMPL", "eager"]
    assert run_name(get_config(opts=same)) == ("swin_tiny_patch4_window7_224", [])
    # A name of one's own is kept whatever the architecture.
    assert run_name(get_config(opts=tiny + ["MODEL.NAME", "my_swin"])) == ("my_swin", [])
    # Keys added later enter the digest only when set, so names given before they existed stay the same:
    assert name == "swin_custom_patch4_window7_224_" + hashlib.sha1(repr(
        [("img_size", 224), ("patch_size", 4), ("in_chans", 3), ("embed_dim", 16), ("depths", [1, 1]),
         ("num_heads", [1, 2]), ("window_size", 7), ("mlp_ratio", 4.0), ("qkv_bias", True), ("qk_scale", None),
         ("ape", False), ("patch_norm", True), ("shift", True), ("rel_pos_bias", True)]).encode()).hexdigest()[:6]
    assert run_name(get_config(opts=tiny + ["MODEL.SWIN.APPEARANCE", "False"]))[0] != name


def test_a_changed_swinv2_architecture_goes_by_a_custom_name():
    from models import run_name

    path = os.path.join(REPO, "configs", "swinv2", "swinv2_tiny_patch4_window8_256.yaml")
    assert run_name(get_config(path)) == ("swinv2_tiny_patch4_window8_256", [])
    name, changes = run_name(get_config(path, ["MODEL.SWINV2.EMBED_DIM", "64", "DATA.IMG_SIZE", "128"]))
    assert name.startswith("swinv2_custom_patch4_window8_128_") and len(name) == len("swinv2_custom_patch4_window8_128_") + 6
    assert changes == ["DATA.IMG_SIZE 128 (swinv2_tiny_patch4_window8_256 has 256)",
                       "MODEL.SWINV2.EMBED_DIM 64 (swinv2_tiny_patch4_window8_256 has 96)"]
    windows = run_name(get_config(path, ["MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[4, 4, 4, 2]"]))
    assert windows[1] == ["MODEL.SWINV2.PRETRAINED_WINDOW_SIZES [4, 4, 4, 2] (swinv2_tiny_patch4_window8_256 has "
                          "[0, 0, 0, 0])"]
    assert run_name(get_config(path, ["MODEL.NUM_CLASSES", "10", "MODEL.DROP_PATH_RATE", "0.5"]))[1] == []
    # a stage's pre-training window equal to the window it runs (8; the last stage's 8x8 map) is the same model
    from models.swinv2 import relative_coords_table
    assert torch.equal(relative_coords_table((8, 8), (8, 8)), relative_coords_table((8, 8)))
    assert run_name(get_config(path, ["MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[8, 8, 8, 8]"])) == \
        ("swinv2_tiny_patch4_window8_256", [])
    at_128 = ["DATA.IMG_SIZE", "128"]  # the last stage's map is 4x4, so its window is 4
    assert run_name(get_config(path, at_128 + ["MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[8, 8, 8, 4]"])) == \
        run_name(get_config(path, at_128))
    assert run_name(get_config(path, at_128 + ["MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[8, 8, 8, 8]"]))[1][-1] == \
        "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES [8, 8, 8, 8] (swinv2_tiny_patch4_window8_256 has [0, 0, 0, 0])"


def _variant_opts(name: str) -> list:
    from models.zoo import ZOO, claimed_variant

    v = ZOO[claimed_variant(name)]
    return ["MODEL.SWIN.EMBED_DIM", str(v.embed_dim), "MODEL.SWIN.DEPTHS", str(list(v.depths)),
            "MODEL.SWIN.NUM_HEADS", str(list(v.num_heads)), "MODEL.SWIN.WINDOW_SIZE", str(v.window_size),
            "DATA.IMG_SIZE", str(v.img_size)]


def test_timm_models_bring_their_own_normalization_and_test_crop():
    from models.build import own_input_config

    vit = get_config(opts=["MODEL.TYPE", "timm", "MODEL.NAME", "vit_base_patch16_224"])
    assert own_input_config(vit) == {"DATA.MEAN": [0.5] * 3, "DATA.STD": [0.5] * 3, "TEST.CROP_PCT": 0.9}
    resnet = get_config(opts=["MODEL.TYPE", "timm", "MODEL.NAME", "resnet50", "DATA.MEAN", "[0.4, 0.4, 0.4]"])
    assert own_input_config(resnet) == {"DATA.STD": [0.229, 0.224, 0.225], "TEST.CROP_PCT": 0.95}  # given: kept
    for opts in ([], ["MODEL.TYPE", "pvt", "MODEL.NAME", "pvt_small"],
                 ["MODEL.TYPE", "timm", "MODEL.NAME", "vit_small_patch16_224_v2020"]):
        assert own_input_config(get_config(opts=opts)) == {}  # ImageNet's and the official crop
