import pytest
import timm
import torch
import torchvision
from timm.models.swin_transformer import checkpoint_filter_fn

import models
from models import SwinTransformer, count_params, create_model
from models.weights import load_weights
from tests.helpers.models import perturb, tiny_kwargs


def _timm_twin(model, name, **kwargs):
    ref = timm.create_model(name, weight_init="skip", **kwargs).eval()
    ref.load_state_dict(checkpoint_filter_fn(model.state_dict(), ref))
    return ref


@pytest.mark.parametrize("name", models.list_models())
def test_logits_equal_timm_for_every_variant(name):
    torch.manual_seed(0)
    model = perturb(create_model(name)).eval()  # every variant in full: all depths, widths and windows
    ref = _timm_twin(model, name)
    size = models.ZOO[name].img_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out, expected = model(x), ref(x)
    assert out.shape == (1, 1000)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def _tv_twin(seed=0):
    torch.manual_seed(seed)
    tv = perturb(torchvision.models.swin_t(), scale=0.3).eval()
    model = create_model("swin_tiny_patch4_window7_224").eval()
    report = load_weights(model, tv.state_dict())
    assert report.layout == "torchvision" and len(report.loaded) == len(model.state_dict())
    return model, tv


def test_logits_equal_torchvision_swin_t_at_any_input_size():
    # 100x260 is neither square nor a multiple of the window in any stage (padding and runtime masks everywhere),
    # and its 4x9 last stage is shifted along the width only
    model, tv = _tv_twin()
    x = torch.randn(1, 3, 100, 260)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=0, atol=1e-4)
    assert [len(b._masks) for b in model.layers[3].blocks] == [0, 1]


def test_runtime_masks_are_cached_per_size():
    model = SwinTransformer(**tiny_kwargs()).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        model(torch.randn(1, 3, 60, 88))
        model(torch.randn(2, 3, 60, 88))
    block = model.layers[0].blocks[1]
    assert set(k[0] for k in block._masks) == {(16, 16), (16, 24)}  # 15x22 tokens padded to the window


def test_sdpa_equals_eager():
    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs(img_size=128))).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        eager = model(x)
        model.set_attn_impl("sdpa")
        sdpa = model(x)
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)


def test_cpu_sdpa_setting_runs_sdpa_in_fp32_and_eager_in_bf16(monkeypatch):
    """On CPU the "sdpa" setting calls SDPA for fp32 inference only; under bf16 autocast the eager products
    are faster for small windows, and give the same logits as the eager setting."""
    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs(img_size=64), attn_impl="sdpa")).eval()
    x = torch.randn(2, 3, 64, 64)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        model(x)
        assert calls, "fp32 CPU inference should use SDPA"
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_sdpa_setting = model(x)
            model.set_attn_impl("eager")
            bf16_eager = model(x)
    assert not calls and torch.equal(bf16_sdpa_setting, bf16_eager)


def test_sdpa_and_eager_gradients_agree_in_training():
    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs()))
    x = torch.randn(2, 3, 64, 64)

    def grads(impl):
        model.set_attn_impl(impl)
        model.zero_grad()
        model(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # a trained bias table: on CPU the SDPA setting runs the eager kernel (CPU SDPA has no fused kernel then)
    eager, sdpa = grads("eager"), grads("sdpa")
    assert eager["layers.0.blocks.1.attn.relative_position_bias_table"].abs().sum() > 0
    for n in eager:
        assert torch.equal(sdpa[n], eager[n]), n
    # frozen tables: the fused SDPA kernel runs forward and backward
    for n, p in model.named_parameters():
        p.requires_grad_("bias_table" not in n)
    eager, sdpa = grads("eager"), grads("sdpa")
    assert len(eager) == len(sdpa) > 0
    for n in eager:
        torch.testing.assert_close(sdpa[n], eager[n], rtol=1e-4, atol=1e-5, msg=n)


def test_cached_bias_follows_weight_updates():
    torch.manual_seed(0)
    model = SwinTransformer(**tiny_kwargs()).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        for m in model.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.add_(1.0)
        after = model(x)
        fresh = SwinTransformer(**tiny_kwargs()).eval()
        fresh.load_state_dict(model.state_dict())
        assert not torch.equal(before, after)
        torch.testing.assert_close(after, fresh(x), rtol=0, atol=0)


def test_use_checkpoint_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = perturb(SwinTransformer(**tiny_kwargs(drop_path_rate=0.2)))
    ckpt = SwinTransformer(**tiny_kwargs(drop_path_rate=0.2, use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same stochastic-depth draws
        out = model(x)
        out.square().sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=0, atol=0, msg=n)


def test_state_dict_has_the_official_names_and_no_buffers():
    sd = create_model("swin_tiny_patch4_window7_224", ape=True).state_dict()
    for key in ("patch_embed.proj.weight", "patch_embed.norm.weight", "absolute_pos_embed",
                "layers.0.blocks.1.norm1.weight", "layers.0.blocks.1.attn.qkv.weight",
                "layers.0.blocks.1.attn.proj.bias", "layers.0.blocks.1.attn.relative_position_bias_table",
                "layers.0.blocks.1.norm2.bias", "layers.0.blocks.1.mlp.fc1.weight", "layers.0.blocks.1.mlp.fc2.bias",
                "layers.2.downsample.norm.weight", "layers.2.downsample.reduction.weight", "norm.weight",
                "head.weight", "head.bias"):
        assert key in sd, key
    assert "layers.3.downsample.reduction.weight" not in sd and "layers.0.downsample.reduction.bias" not in sd
    assert not any("relative_position_index" in k or "attn_mask" in k for k in sd)
    assert sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape == (169, 3)


def test_ablations_remove_shift_and_bias():
    no_bias = SwinTransformer(**tiny_kwargs(), rel_pos_bias=False)
    assert not any("relative_position" in k for k in no_bias.state_dict())
    no_shift = SwinTransformer(**tiny_kwargs(), shift=False)
    assert all(b.shift_size == 0 for layer in no_shift.layers for b in layer.blocks)
    base = SwinTransformer(**tiny_kwargs())
    # maps 16, 8, 4, 2 with window 4: the last window shrinks to 2; a map no larger than its window never shifts
    assert [b.shift_size for layer in base.layers for b in layer.blocks] == [0, 2, 0, 2, 0, 2, 0, 1]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base(x)
    assert [len(b._masks) for layer in base.layers for b in layer.blocks] == [0, 1, 0, 1, 0, 0, 0, 0]
    for impl in ("eager", "sdpa"):
        no_bias.set_attn_impl(impl)
        assert torch.isfinite(no_bias(x)).all()


def test_without_appearance_the_weights_come_from_the_bias_alone():
    """The ablation "rel. pos. w/o app.": softmax(B + mask) @ v, so the query and key projections change nothing."""
    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs(), appearance=False)).eval()
    x = torch.randn(2, 3, 64, 64)
    for impl in ("eager", "sdpa"):  # built for either kernel, such a block always runs the eager products
        model.set_attn_impl(impl)
        with torch.no_grad():
            before = model(x)
            for m in model.modules():
                if hasattr(m, "qkv"):
                    c = m.dim
                    m.qkv.weight[:2 * c].normal_()  # the q and k rows
                    m.qkv.bias[:2 * c].normal_()
            assert torch.equal(model(x), before)
            model.layers[0].blocks[0].attn.qkv.weight[2 * 16:].normal_()  # the v rows do matter
            assert not torch.allclose(model(x), before)
    with_app = SwinTransformer(**tiny_kwargs())
    assert count_params(with_app) == count_params(model)  # same parameters, q and k unused


def test_each_stage_is_built_for_the_map_it_runs_on():
    """A 7x7 map merges (padded) into 4x4: the next stage gets 4x4 windows over it, not 3x3 windows over a 6x6 pad."""
    model = SwinTransformer(img_size=28, patch_size=2, in_chans=1, embed_dim=8, depths=(1, 1, 1), num_heads=(1, 1, 2),
                            window_size=7, num_classes=3)
    assert [layer.blocks[0].window for layer in model.layers] == [(7, 7), (7, 7), (4, 4)]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_official_init_and_no_weight_decay_names():
    torch.manual_seed(0)
    model = create_model("swin_tiny_patch4_window7_224", ape=True)
    assert model.no_weight_decay() == {"absolute_pos_embed"}
    assert model.no_weight_decay_keywords() == {"relative_position_bias_table"}
    assert torch.count_nonzero(model.head.bias) == 0 and torch.all(model.norm.weight == 1)
    assert 0.019 < model.layers[0].blocks[0].attn.qkv.weight.std() < 0.021  # trunc_normal std .02
    assert 0.015 < model.layers[0].blocks[0].attn.relative_position_bias_table.std() < 0.025


def test_wrong_channel_count_raises_one_clear_error():
    model = SwinTransformer(**tiny_kwargs())
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\).*in_chans=1"):
        model(torch.randn(1, 1, 56, 56))


def test_eval_forward_traces_into_one_graph_for_torch_compile():
    # the cached bias lookup must not break the graph (38 breaks on this model before it was skipped under compile)
    model = SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2),
                            num_classes=10, attn_impl="sdpa").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0 and explanation.graph_count == 1
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)  # the cache path still serves eager calls


def _official_eager(self, qkv, mask):
    """The official attention products: the bias added with type promotion (bf16 logits -> float32)."""
    _, b_, heads, n, _ = qkv.shape
    q, k, v = qkv.unbind(0)
    bias = self.attn_bias(mask, self.relative_position_bias_table.dtype)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    nw = bias.shape[0]
    attn = (attn.view(-1, nw, heads, n, n) + bias).view(b_, heads, n, n)
    return attn.softmax(dim=-1) @ v


@pytest.mark.parametrize("train", [False, True])
def test_bf16_bias_add_is_the_official_one_bitwise(monkeypatch, train):
    """Under bf16 autocast the eager path widens the logits and adds the float32 bias in place: the same
    logits, and in training the same gradients, as the official promoting add."""
    from models.attention import WindowAttention

    torch.manual_seed(0)
    model = perturb(SwinTransformer(**tiny_kwargs())).train(train)  # no drop path: repeatable
    x = torch.randn(2, 3, 64, 64)

    def run():
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        if train:
            out.float().square().sum().backward()
        return out, {n: p.grad for n, p in model.named_parameters()}

    ours, grads = run()
    monkeypatch.setattr(WindowAttention, "_eager", _official_eager)
    ref, ref_grads = run()
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)
    for n, g in ref_grads.items():
        assert (g is None and grads[n] is None) or torch.equal(grads[n], g), n
