"""The attention kernel decision (models.attention.choose_kernel) and the override FLOP counting uses."""
import pytest
import torch
import torch.nn.functional as F

from models import SwinTransformer, count_flops
from models import attention
from models.attention import choose_kernel, forced_kernel


@pytest.mark.parametrize("impl, device, dtype, bias_trains, chosen", [
    ("sdpa", "cuda", torch.bfloat16, True, "sdpa"),
    ("sdpa", "cuda", torch.float32, False, "sdpa"),
    ("sdpa", "cpu", torch.float32, False, "sdpa"),  # fp32 CPU inference: SDPA's fused kernel
    ("sdpa", "cpu", torch.float32, True, "eager"),  # a bias that trains: SDPA would fall back to its math kernel
    ("sdpa", "cpu", torch.bfloat16, False, "eager"),  # small windows in bf16: eager beats flash on CPU
    ("eager", "cuda", torch.float16, False, "eager"),
])
def test_choose_kernel(impl, device, dtype, bias_trains, chosen):
    assert choose_kernel(impl, device, dtype, bias_trains) == chosen


def test_forced_kernel_overrides_every_module_and_restores():
    with forced_kernel("eager"):
        assert choose_kernel("sdpa", "cuda", torch.float32, False) == "eager"
        with forced_kernel("sdpa"):
            assert choose_kernel("eager", "cpu", torch.float32, False) == "sdpa"
        assert choose_kernel("sdpa", "cuda", torch.float32, False) == "eager"
    assert choose_kernel("sdpa", "cuda", torch.float32, False) == "sdpa"
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        with forced_kernel("flash"):
            pass


def _tiny(attn_impl: str) -> SwinTransformer:
    return SwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4,
                           num_classes=10, attn_impl=attn_impl)


def test_flop_counting_runs_the_eager_products_without_touching_the_modules(monkeypatch):
    model = _tiny("sdpa").eval()
    eager = count_flops(_tiny("eager"), 32)
    sdpa = F.scaled_dot_product_attention

    def no_sdpa(*args, **kwargs):
        raise AssertionError("SDPA ran while FLOPs were counted")

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", no_sdpa)
    assert count_flops(model, 32) == eager
    assert {m.attn_impl for m in model.modules() if isinstance(m, attention.WindowAttention)} == {"sdpa"}
    calls = []
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():  # and outside the counter the model runs its own kernel again: fp32 CPU inference, SDPA
        model(torch.zeros(1, 3, 32, 32))
    assert calls
