"""Swin Transformer V2 (models/swinv2.py): exact parameter counts, logits equal to timm's and torchvision's, the
official parameter names, the clamped logit scale, the continuous position bias and the official init."""
import math

import pytest
import timm
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2 as TimmSwinV2
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformerBlockV2
from torchvision.models.swin_transformer import SwinTransformer as TorchvisionSwin

import models.linear as linear_mod
from models.flops import count_params
from models.swinv2 import (SWINV2_ZOO, SwinTransformerV2, create_swinv2, relative_coords_table,
                           swinv2_from_timm)
from models.weights import load_weights

SMALL = dict(img_size=64, embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4, num_classes=10)


def _randomise(model, seed=0, scale=0.3):
    """Noise on every parameter (norms, biases, logit scales, position-bias MLPs too), with every other head's
    logit scale above the clamp, so that parity can fail anywhere."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
            if name.endswith("logit_scale"):
                p[::2] = 5.0  # exp(5) > 100: clamped
    return model


@pytest.mark.parametrize("name", list(SWINV2_ZOO))
def test_exact_parameter_counts_equal_timm(name):
    variant = SWINV2_ZOO[name]
    with torch.device("meta"):
        model = create_swinv2(name)
        ref = timm.create_model(variant.timm_name, num_classes=variant.num_classes)
    assert model.num_classes == variant.num_classes
    assert count_params(model) == variant.params == count_params(ref)


@pytest.mark.parametrize("kwargs", [
    dict(SMALL),  # both stages shifted: 16x16 and 8x8 maps in 4x4 windows
    dict(SMALL, pretrained_window_sizes=(8, 3)),  # coordinates of other pre-training windows
    # 16x16 shifted in 8x8 windows, 8x8 a single window (no shift), 4x4 a window clamped to the map
    dict(SMALL, depths=(2, 2, 2), num_heads=(2, 4, 4), window_size=8, pretrained_window_sizes=(12, 12, 6)),
], ids=["shifted", "pretrained_windows", "clamped_window"])
def test_logits_equal_timm(kwargs):
    torch.manual_seed(0)
    ref = _randomise(TimmSwinV2(**kwargs)).eval()
    model = SwinTransformerV2(**kwargs).eval()
    model.load_state_dict(swinv2_from_timm(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_torchvision_files_load_and_give_its_logits_at_sizes_not_multiple_of_the_window(tmp_path):
    # 100x260: 25x65 and 13x33 maps, padded per block and then shifted, as torchvision's SwinV2 does; its file
    # loads as it is (one qkv bias whose key third torchvision zeroes in every forward -> q_bias, v_bias)
    torch.manual_seed(0)
    tv = TorchvisionSwin([4, 4], 32, [2, 2], [2, 4], [4, 4], num_classes=10, block=SwinTransformerBlockV2,
                         downsample_layer=PatchMergingV2)
    tv = _randomise(tv).eval()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    model = SwinTransformerV2(**SMALL).eval()
    report = load_weights(model, tmp_path / "tv.pth")
    assert report.layout == "torchvision" and len(report.loaded) == len(model.state_dict())
    x = torch.randn(1, 3, 100, 260)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not linear_mod.onednn_available(), reason="this torch build has no oneDNN linear op")
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch warns when the mkldnn flags are set
def test_onednn_route_gives_the_logits_and_gradients_of_f_linear(monkeypatch):
    # the route every float32 CPU linear takes where oneDNN pays (AVX-512), taken here on any CPU
    monkeypatch.setattr(linear_mod, "onednn_fp32_pays", lambda: True)
    calls, real = [], linear_mod._lp
    monkeypatch.setattr(linear_mod, "_lp", lambda *args: calls.append(1) or real(*args))
    torch.manual_seed(0)
    model = _randomise(SwinTransformerV2(**SMALL, drop_path_rate=0.0))  # training forwards, nothing random
    x = torch.randn(2, 3, 64, 64)

    def logits_and_gradients():
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        return [out] + [p.grad for p in model.parameters()]

    fast = logits_and_gradients()
    with torch.backends.mkldnn.flags(enabled=False):
        reference = logits_and_gradients()
    torch.testing.assert_close(fast[0], reference[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(fast[1:], reference[1:]):  # sums over every token (the flag switches the conv's kernel too)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * b.abs().max().item())
    calls.clear()
    with torch.no_grad():
        model.eval()(x)
    assert len(calls) == sum(isinstance(m, torch.nn.Linear) for m in model.modules())  # qkv with its q, v biases too


def test_official_parameter_names_and_no_buffers_saved():
    with torch.device("meta"):
        model = create_swinv2("swinv2_tiny_patch4_window8_256")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["layers.0.blocks.0.attn.logit_scale"] == (3, 1, 1)
    assert shapes["layers.0.blocks.0.attn.cpb_mlp.0.weight"] == (512, 2)
    assert shapes["layers.0.blocks.0.attn.cpb_mlp.0.bias"] == (512,)
    assert shapes["layers.3.blocks.1.attn.cpb_mlp.2.weight"] == (24, 512) and "cpb_mlp.2.bias" not in str(shapes)
    assert shapes["layers.0.blocks.0.attn.q_bias"] == (96,) and shapes["layers.0.blocks.0.attn.v_bias"] == (96,)
    assert shapes["layers.0.blocks.0.attn.qkv.weight"] == (288, 96) and not any("k_bias" in k for k in shapes)
    assert "layers.0.blocks.0.attn.qkv.bias" not in shapes
    assert shapes["layers.0.downsample.reduction.weight"] == (192, 384)
    assert shapes["layers.0.downsample.norm.weight"] == (192,)  # the norm after the reduction: 2C
    assert "layers.3.downsample.reduction.weight" not in shapes and shapes["head.weight"] == (1000, 768)
    assert shapes["layers.2.blocks.5.norm1.weight"] == (384,) and shapes["layers.1.blocks.1.mlp.fc2.bias"] == (192,)
    buffers = {name for name, _ in model.named_buffers()}
    assert "layers.0.blocks.0.attn.relative_coords_table" in buffers
    assert "layers.0.blocks.0.attn.relative_position_index" in buffers
    assert not buffers & set(shapes)


def test_official_checkpoint_layout_loads_with_its_buffers():
    # official checkpoints hold relative_coords_table, relative_position_index and attn_mask; they are skipped
    torch.manual_seed(0)
    source = _randomise(SwinTransformerV2(**SMALL))
    sd = dict(source.state_dict())
    sd["layers.0.blocks.0.attn.relative_coords_table"] = torch.zeros(1, 7, 7, 2)
    sd["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    sd["layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    model = SwinTransformerV2(**SMALL)
    report = load_weights(model, {"model": sd})
    assert len(report.skipped) == 3 and len(report.loaded) == len(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_timm_layout_conversion():
    sd = {"layers_1.downsample.reduction.weight": 1, "layers.3.downsample.norm.bias": 2, "head.fc.weight": 3,
          "layers.0.blocks.1.attn_mask": 4, "layers.2.blocks.0.attn.relative_coords_table": 5,
          "layers.1.blocks.0.attn.q_bias": 6, "norm.weight": 7}
    assert swinv2_from_timm(sd) == {"layers.0.downsample.reduction.weight": 1, "layers.2.downsample.norm.bias": 2,
                                    "head.weight": 3, "layers.1.blocks.0.attn.q_bias": 6, "norm.weight": 7}


def test_logit_scale_is_clamped_at_100():
    torch.manual_seed(0)
    attn = _randomise(SwinTransformerV2(**SMALL)).layers[0].blocks[0].attn
    x = torch.randn(16, 16, 32)  # 16 windows of 4x4 tokens
    with torch.no_grad():
        attn.logit_scale.fill_(math.log(100.0))
        at_clamp = attn(x)
        attn.logit_scale.fill_(10.0)
    torch.testing.assert_close(attn.scale(), torch.full((2, 1, 1), 100.0))
    out = attn(x)
    torch.testing.assert_close(out, at_clamp, rtol=0, atol=0)
    out.sum().backward()
    assert attn.logit_scale.grad.abs().max() == 0  # above the clamp nothing trains it
    assert attn.cpb_mlp[0].weight.grad.abs().max() > 0 and attn.q_bias.grad.abs().max() > 0


def test_coordinates_of_a_transferred_window_extend_those_of_pre_training():
    # a window 24 model fine-tuned from window 12 (pretrained_window 12) sees the offsets of the 12-window at
    # the coordinates they were trained at, and the larger offsets beyond them
    pretrained = relative_coords_table((12, 12))  # 1, 23, 23, 2
    transferred = relative_coords_table((24, 24), (12, 12))  # 1, 47, 47, 2
    torch.testing.assert_close(transferred[:, 12:35, 12:35], pretrained, rtol=0, atol=0)
    edge = math.log2(1 + 8) / 3  # the largest pre-training offset, 11, scaled to 8
    torch.testing.assert_close(pretrained[0, 22, 11], torch.tensor([edge, 0.0]))
    torch.testing.assert_close(transferred[0, 46, 0], torch.tensor([1.0, -1.0]) * math.log2(1 + 8 * 23 / 11) / 3)
    assert relative_coords_table((1, 1)).isfinite().all()


def test_official_init_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = SwinTransformerV2(**SMALL)
    block = model.layers[1].blocks[1]
    assert torch.equal(block.attn.logit_scale, torch.full((4, 1, 1), math.log(10.0)))
    x = torch.randn(2, 8, 8, 64)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)  # res-post-norms start at zero
    assert model.no_weight_decay_keywords() == {"cpb_mlp", "logit_scale"}


def test_unknown_name_lists_the_official_models():
    with pytest.raises(KeyError, match="swinv2_tiny_patch4_window8_256, swinv2_tiny_patch4_window16_256"):
        create_swinv2("swinv2_huge_patch4_window8_256")


def test_the_fused_kernel_gives_the_eager_logits_and_gradients(monkeypatch):
    """The SDPA path (taken on CUDA; forced here on CPU) against the eager products, with shifted windows, padding
    (100x260 input) and the shift mask folded into the heads."""
    import models.swinv2 as swinv2

    torch.manual_seed(0)
    model = _randomise(SwinTransformerV2(**SMALL, drop_path_rate=0.0)).train()
    x = torch.randn(2, 3, 100, 260)
    results, calls = [], []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(swinv2.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    for impl in ("auto", "sdpa"):  # auto: eager on CPU
        for module in model.modules():
            if isinstance(module, swinv2.WindowAttentionV2):
                module.attn_impl = impl
        model.zero_grad()
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (sdpa, sdpa_grads) = results
    assert len(calls) == 4  # one per block, in the fused pass only
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(sdpa_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_kernel_choice_follows_the_config_and_the_forced_kernel():
    import models.swinv2 as swinv2
    from configs import get_config
    from models import build_model
    from models.attention import forced_kernel

    cpu, meta = torch.empty(1), torch.empty(1, device="meta")
    assert [swinv2.use_sdpa(cpu, impl) for impl in ("auto", "eager", "sdpa")] == [False, False, True]
    with forced_kernel("eager"):  # FLOP counting's override wins over the module's choice
        assert not swinv2.use_sdpa(meta, "sdpa")
    opts = ["MODEL.TYPE", "swinv2", "MODEL.NAME", "tiny", "DATA.IMG_SIZE", "64", "MODEL.SWINV2.EMBED_DIM", "16",
            "MODEL.SWINV2.DEPTHS", "[2]", "MODEL.SWINV2.NUM_HEADS", "[1]", "MODEL.SWINV2.PRETRAINED_WINDOW_SIZES", "[0]"]
    for impl in ("auto", "eager", "sdpa"):
        model = build_model(get_config(None, opts + ["MODEL.SWINV2.ATTN_IMPL", impl]))
        assert {m.attn_impl for m in model.modules() if isinstance(m, swinv2.WindowAttentionV2)} == {impl}
    with pytest.raises(ValueError, match="attn_impl must be one of auto, eager, sdpa"):
        swinv2.WindowAttentionV2(16, 1, (4, 4), attn_impl="flash")
