import os

import pytest
import torch
from timm.layers import resize_rel_pos_bias_table_simple
from timm.models.swin_transformer import SwinTransformer as TimmSwin

from models import SwinTransformer
from models.imagenet22k import in22k_to_in1k_indices
from models.weights import WeightsError, load_weights
from models.window import shifted_window_mask
from tests.helpers.models import perturb, tiny_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAP_FILE = os.path.join(REPO, "..", "shared", "reference", "map22kto1k.txt")


def _official_checkpoint(model):
    # the official release also saves the derived buffers
    sd = dict(model.state_dict())
    for i, layer in enumerate(model.layers):
        for j, block in enumerate(layer.blocks):
            sd[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = block.attn.relative_position_index
            if block.shift_size:
                sd[f"layers.{i}.blocks.{j}.attn_mask"] = shifted_window_mask((16, 16), block.window, (2, 2))
    return {"model": sd}


def test_official_checkpoint_with_buffers_loads_exactly(tmp_path):
    torch.manual_seed(0)
    src = perturb(SwinTransformer(**tiny_kwargs()))
    path = tmp_path / "official.pth"
    torch.save(_official_checkpoint(src), path)
    dst = SwinTransformer(**tiny_kwargs())
    report = load_weights(dst, path)
    assert report.layout == "official" and str(path) in str(report)
    assert "layers.0.blocks.1.attn_mask" in report.skipped and not report.resized
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), n


def test_timm_layout_is_converted():
    torch.manual_seed(0)
    kw = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, num_classes=10)
    ref = perturb(TimmSwin(**kw)).eval()
    model = SwinTransformer(**kw).eval()
    report = load_weights(model, {"state_dict": {"module." + k: v for k, v in ref.state_dict().items()}})
    assert report.layout == "timm"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=1e-5)


def test_pickle_that_runs_code_is_refused_naming_the_file(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"head.weight": torch.zeros(1)}, "extra": Evil()}, path)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="evil.pth"):
        load_weights(SwinTransformer(**tiny_kwargs()), path)
    assert not marker.exists()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(SwinTransformer(**tiny_kwargs()), tmp_path / "nope.pth")


def test_other_architecture_lists_mismatched_keys_and_shapes():
    other = SwinTransformer(**tiny_kwargs(embed_dim=32, depths=(2, 2, 4, 2)))
    with pytest.raises(WeightsError) as err:
        load_weights(SwinTransformer(**tiny_kwargs()), other.state_dict())
    msg = str(err.value)
    unexpected = [k for k in other.state_dict() if k.startswith(("layers.2.blocks.2.", "layers.2.blocks.3."))]
    assert f"unexpected ({len(unexpected)}): {unexpected[0]}; " in msg  # the first five of them, then a count
    assert f"... and {len(unexpected) - 5} more" in msg
    assert "patch_embed.proj.weight: checkpoint (32, 3, 4, 4) vs model (16, 3, 4, 4)" in msg
    headless = {k: v for k, v in SwinTransformer(**tiny_kwargs()).state_dict().items() if not k.startswith("head")}
    with pytest.raises(WeightsError, match=r"missing \(2\): head.weight; head.bias"):
        load_weights(SwinTransformer(**tiny_kwargs()), headless)


def test_finetune_resizes_bias_tables_as_the_official_code():
    torch.manual_seed(0)
    src = perturb(SwinTransformer(**tiny_kwargs(img_size=224, window_size=7, depths=(2, 2, 2, 2))))
    dst = SwinTransformer(**tiny_kwargs(img_size=384, window_size=12, depths=(2, 2, 2, 2)))
    with pytest.raises(WeightsError, match=r"bias_table: checkpoint \(169, 1\) vs model \(529, 1\)"):
        load_weights(dst, src.state_dict())
    report = load_weights(dst, src.state_dict(), mode="finetune")
    key = "layers.0.blocks.1.attn.relative_position_bias_table"
    assert key in report.resized and len(report.resized) == 8
    expected = resize_rel_pos_bias_table_simple(src.state_dict()[key], (12, 12), (529, 1))
    torch.testing.assert_close(dst.state_dict()[key], expected, rtol=0, atol=1e-6)


def test_finetune_resizes_absolute_position_embedding():
    src = perturb(SwinTransformer(**tiny_kwargs(ape=True)))
    dst = SwinTransformer(**tiny_kwargs(ape=True, img_size=128))
    report = load_weights(dst, src.state_dict(), mode="finetune")
    # the 2x2 last stage had shrunk its window to 2; at 128 it is a full window of 4
    assert report.resized == ["absolute_pos_embed"] + [
        f"layers.3.blocks.{j}.attn.relative_position_bias_table" for j in (0, 1)]
    assert dst.absolute_pos_embed.shape == (1, 1024, 16)
    grid = src.absolute_pos_embed.view(1, 16, 16, 16).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(32, 32), mode="bicubic")
    expected = expected.permute(0, 2, 3, 1).reshape(1, -1, 16)
    torch.testing.assert_close(dst.absolute_pos_embed.data, expected, rtol=0, atol=1e-6)


def test_finetune_maps_a_22k_head_to_1k_and_reinitialises_other_heads():
    src = perturb(SwinTransformer(**tiny_kwargs(num_classes=21841)))
    dst = SwinTransformer(**tiny_kwargs(num_classes=1000))
    report = load_weights(dst, src.state_dict(), mode="finetune")
    assert report.remapped == ["head.weight", "head.bias"]
    rows = torch.tensor(in22k_to_in1k_indices())
    assert torch.equal(dst.head.weight, src.head.weight[rows]) and torch.equal(dst.head.bias, src.head.bias[rows])
    other = SwinTransformer(**tiny_kwargs(num_classes=7))
    before = other.head.weight.clone()
    report = load_weights(other, src.state_dict(), mode="finetune")
    assert report.reinitialized == ["head.weight", "head.bias"] and torch.equal(other.head.weight, before)
    assert torch.equal(other.norm.weight, src.norm.weight)


def test_22k_to_1k_map_equals_the_official_file():
    if not os.path.isfile(MAP_FILE):
        pytest.skip(f"reference mapping {MAP_FILE} is not available in this checkout")
    with open(MAP_FILE) as f:
        official = [int(line) for line in f if line.strip()]
    assert len(official) == 1000
    assert in22k_to_in1k_indices() == official


def test_other_models_load_their_own_layout_and_fine_tune_their_classifier(tmp_path):
    """A timm baseline's file (state dict or safetensors) and an official PVT file ({"model": ...}) load unchanged;
    fine-tuning re-initialises the classifier wherever the model keeps it (ResNet's fc, PVT's head)."""
    import timm
    from safetensors.torch import save_file

    from models.pvt import create_pvt

    torch.manual_seed(0)
    src = timm.create_model("test_resnet", num_classes=1000)
    save_file(src.state_dict(), str(tmp_path / "r.safetensors"))
    torch.save(src.state_dict(), tmp_path / "r.pth")
    for name in ("r.safetensors", "r.pth"):
        dst = timm.create_model("test_resnet", num_classes=1000)
        assert load_weights(dst, tmp_path / name).layout == "own"
        assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values()))
    ten = timm.create_model("test_resnet", num_classes=10)
    report = load_weights(ten, tmp_path / "r.pth", "finetune")
    assert report.reinitialized == ["fc.weight", "fc.bias"]
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in ten.state_dict().items() if not k.startswith("fc."))
    pvt = create_pvt("pvt_tiny", img_size=64)
    torch.save({"model": pvt.state_dict()}, tmp_path / "pvt.pth")
    five = create_pvt("pvt_tiny", img_size=64, num_classes=5)
    assert load_weights(five, tmp_path / "pvt.pth", "finetune").reinitialized == ["head.weight", "head.bias"]
    assert torch.equal(five.pos_embed4, pvt.pos_embed4)
    with pytest.raises(WeightsError, match="mis-shaped"):
        load_weights(create_pvt("pvt_tiny", img_size=64, num_classes=5), tmp_path / "pvt.pth")


def test_pvt_and_vit_fine_tune_at_another_image_size(tmp_path):
    """--pretrained at another resolution resizes every absolute position embedding over its patch grid, keeping
    class tokens (PVT's pos_embed4, ViT's pos_embed) as they are; exact loading names the keys to check."""
    import timm

    from models.pvt import create_pvt
    from models.weights import resize_pos_embed

    torch.manual_seed(0)
    pvt = create_pvt("pvt_tiny", img_size=64)
    big = create_pvt("pvt_tiny", img_size=96)
    report = load_weights(big, pvt.state_dict(), "finetune")
    assert sorted(report.resized) == ["pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"]
    assert torch.equal(big.pos_embed4[:, :1], pvt.pos_embed4[:, :1])  # the class token's entry
    assert torch.equal(big.pos_embed1, resize_pos_embed(pvt.pos_embed1, 24 * 24))
    assert big(torch.randn(1, 3, 96, 96)).shape == (1, 1000)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10)
    vit48 = timm.create_model("vit_tiny_patch16_224", img_size=48, num_classes=10)
    assert load_weights(vit48, vit.state_dict(), "finetune").resized == ["pos_embed"]
    assert vit48.pos_embed.shape == (1, 1 + 9, 192) and torch.equal(vit48.pos_embed[:, 0], vit.pos_embed[:, 0])
    with pytest.raises(WeightsError, match=r"the MODEL.NAME and DATA.IMG_SIZE keys"):
        load_weights(create_pvt("pvt_tiny", img_size=96), pvt.state_dict())
