import time

import pytest
import torch
import torch.utils.checkpoint
from timm.layers import Mlp as TimmMlp
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models import SwinTransformer
from models import linear as linear_mod
from models.cpu import cpu_bf16_native
from models.linear import Linear, Mlp, onednn_available
from tests.helpers.models import tiny_kwargs

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN linear op")
needs_onednn_bf16 = pytest.mark.skipif(
    not cpu_bf16_native(), reason="bf16 is not native on this CPU (or torch runs below AVX-512 kernels here): "
    "the bf16 inference route is off and bf16 linears run on F.linear")


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the oneDNN calls as (attr, algorithm) while still running them; the fp32 route is taken on every
    CPU (the kernels exist everywhere; `onednn_fp32_pays` only decides where it is the default)."""
    monkeypatch.setattr(linear_mod, "onednn_fp32_pays", lambda: True)
    calls = []
    real = linear_mod._lp

    def counting(x, weight, bias=None, attr="none", algorithm=""):
        calls.append((attr, algorithm))
        return real(x, weight, bias, attr, algorithm)

    monkeypatch.setattr(linear_mod, "_lp", counting)
    return calls


def _twins(in_f, out_f, bias=True, seed=0):
    torch.manual_seed(seed)
    ours = Linear(in_f, out_f, bias=bias)
    ref = nn.Linear(in_f, out_f, bias=bias)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _grads(module, x, g):
    x = x.detach().requires_grad_()
    y = module(x)
    y.backward(g)
    return y, x.grad, {n: p.grad for n, p in module.named_parameters()}


def _inputs(shape, in_f, layout):
    """A float32 input of the given leading shape as a contiguous, transposed or strided (gapped) view."""
    if layout == "contiguous":
        return torch.randn(*shape, in_f)
    if layout == "transposed":  # channels are not the innermost dimension
        return torch.randn(in_f, *shape).movedim(0, -1)
    return torch.randn(*shape, 2 * in_f + 3)[..., 3::2]  # stride 2 with an offset


@pytest.mark.parametrize("in_f,out_f", [(24, 72), (72, 24), (16, 16)])  # out > in, out < in, square
@pytest.mark.parametrize("shape", [(37,), (3, 13), (2, 3, 5)])  # 2-D, 3-D and 4-D inputs
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_equal_nn_linear(in_f, out_f, shape, layout, bias, onednn_calls):
    ours, ref = _twins(in_f, out_f, bias)
    x = _inputs(shape, in_f, layout)
    g = torch.randn(*shape, out_f).transpose(0, -1).contiguous().transpose(0, -1)  # a non-contiguous gradient too
    y, gx, gp = _grads(ours, x, g)
    y_ref, gx_ref, gp_ref = _grads(ref, x, g)
    assert onednn_calls == [("none", "")] * 3  # forward, input gradient, weight gradient
    assert y.shape == y_ref.shape and y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-5)
    assert gp.keys() == gp_ref.keys() == ({"weight", "bias"} if bias else {"weight"})
    for n in gp:
        torch.testing.assert_close(gp[n], gp_ref[n], rtol=0, atol=1e-5, msg=n)


def test_only_requested_gradients_are_computed(onednn_calls):
    ours, ref = _twins(8, 12)
    ours.weight.requires_grad_(False)
    ref.weight.requires_grad_(False)
    x = torch.randn(5, 8)
    y, gx, gp = _grads(ours, x, torch.ones(5, 12))
    _, gx_ref, gp_ref = _grads(ref, x, torch.ones(5, 12))
    assert onednn_calls == [("none", "")] * 2 and gp["weight"] is None  # no weight-gradient matmul
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gp["bias"], gp_ref["bias"], rtol=0, atol=1e-5)
    onednn_calls.clear()
    ours(x.requires_grad_(False)).sum().backward()  # only the bias needs a gradient
    assert onednn_calls == [("none", "")]


def test_double_backward_matches_nn_linear():
    ours, ref = _twins(6, 10)
    outs = []
    for m in (ours, ref):
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
        (gx,) = torch.autograd.grad(m(x).pow(2).sum(), x, create_graph=True)
        gx.square().sum().backward()
        outs.append((gx, x.grad, m.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_same_parameters_init_and_state_dict_as_nn_linear():
    torch.manual_seed(3)
    ours = Linear(5, 7)
    torch.manual_seed(3)
    ref = nn.Linear(5, 7)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch warns when the mkldnn flags are set
def test_fallback_under_bf16_autocast_other_dtypes_and_dispatch_modes(onednn_calls):
    ours, ref = _twins(8, 12)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = ours(x), ref(x)
    assert y.dtype == torch.bfloat16 and torch.equal(y, y_ref)
    ours64, ref64 = ours.double(), ref.double()
    assert torch.equal(ours64(x.double()), ref64(x.double()))
    ours.float()
    with torch.backends.mkldnn.flags(enabled=False):
        ours(x)
    assert onednn_calls == []
    empty = torch.randn(0, 3, 8, requires_grad=True)
    ours(empty).sum().backward()
    assert empty.grad.shape == empty.shape and torch.equal(ours.weight.grad, torch.zeros(12, 8))
    with FlopCounterMode(display=False) as counter:  # a dispatch mode sees the standard matmul
        ours(x)
    assert counter.get_total_flops() == 2 * 4 * 8 * 12 and onednn_calls == []
    ours(x)
    assert onednn_calls == [("none", "")]


def _mlp_twins(seed=0, drop=0.0):
    torch.manual_seed(seed)
    ours = Mlp(16, 64, drop=drop)
    ref = TimmMlp(16, 64, act_layer=nn.GELU, drop=drop)
    ref.load_state_dict(ours.state_dict())  # timm's keys: fc1.weight, fc1.bias, fc2.weight, fc2.bias
    return ours, ref


def test_mlp_fuses_fc1_and_gelu_at_inference_only(onednn_calls):
    ours, ref = _mlp_twins()
    x = torch.randn(2, 9, 16) * 3  # wide enough to exercise both GELU tails
    with torch.no_grad():
        fused, expected = ours.eval()(x), ref.eval()(x)
    assert onednn_calls == [("gelu", "none"), ("none", "")]
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-5)
    onednn_calls.clear()
    for p in ours.parameters():  # frozen weights, plain input: nothing to record either
        p.requires_grad_(False)
    torch.testing.assert_close(ours(x), fused, rtol=0, atol=0)
    assert onednn_calls[0] == ("gelu", "none")
    onednn_calls.clear()
    ours.act.approximate = ref.act.approximate = "tanh"
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    assert onednn_calls[0] == ("gelu", "tanh")


def test_mlp_training_is_unfused_and_matches_timm(onednn_calls):
    ours, ref = _mlp_twins()
    x = torch.randn(2, 9, 16)
    g = torch.randn(2, 9, 16)
    y, gx, gp = _grads(ours.train(), x, g)
    y_ref, gx_ref, gp_ref = _grads(ref.train(), x, g)
    assert ("gelu", "none") not in onednn_calls and len(onednn_calls) == 6
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-5)
    for n in gp:
        torch.testing.assert_close(gp[n], gp_ref[n], rtol=0, atol=1e-5, msg=n)


def test_mlp_does_not_fuse_past_hooks_or_in_autocast_training(onednn_calls):
    ours, _ = _mlp_twins()
    seen = []
    handle = ours.act.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        ours(torch.randn(3, 16))
    assert seen == [(3, 64)] and ("gelu", "none") not in onednn_calls
    handle.remove()
    onednn_calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training under autocast: F.linear, as autocast casts it
        assert ours(torch.randn(3, 16)).dtype == torch.bfloat16
    assert onednn_calls == []


@pytest.mark.parametrize("capability, pays", [("AVX512", True), ("AVX512_BF16", True), ("AVX2", False),
                                             ("DEFAULT", False), ("SVE256", False)])
def test_fp32_route_follows_the_vector_isa(monkeypatch, capability, pays):
    calls = []
    real = linear_mod._lp
    monkeypatch.setattr(linear_mod, "_lp", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(linear_mod, "cpu_capability", lambda: capability)
    assert linear_mod.onednn_fp32_pays() is pays
    ours, ref = _twins(8, 12)
    x = torch.randn(4, 8)
    y = ours(x)
    assert len(calls) == int(pays)
    if not pays:
        assert torch.equal(y, ref(x))  # F.linear itself


BF16_TOL = dict(rtol=1.6e-2, atol=1e-2)  # a bf16 rounding or two of O(1) values


@needs_onednn_bf16
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch warns when the mkldnn flags are set
def test_bf16_autocast_inference_runs_on_onednn(onednn_calls):
    """Under CPU bf16 autocast without autograd, Linear and Mlp (fc1 + GELU fused) call oneDNN on bf16 operands
    and give what F.linear under autocast gives, to bf16 rounding; with autograd recording they keep F.linear."""
    ours, ref = _twins(24, 40)
    x = torch.randn(3, 7, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            y = ours(x)
        assert onednn_calls == [("none", "")]
        assert torch.equal(ours(x), ref(x))  # recorded by autograd: the plain op, bitwise
    assert onednn_calls == [("none", "")] and y.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(y, ref(x), **BF16_TOL)
        with torch.backends.mkldnn.flags(enabled=False):
            ours(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        ours(x)  # another autocast dtype: F.linear
    assert len(onednn_calls) == 1
    mlp, mlp_ref = _mlp_twins()
    x = torch.randn(2, 9, 16) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused, expected = mlp.eval()(x), mlp_ref.eval()(x)
    assert onednn_calls[1:] == [("gelu", "none"), ("none", "")] and fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused, expected, **BF16_TOL)


def test_checkpointed_mlp_gives_identical_gradients(onednn_calls):
    ours, _ = _mlp_twins()
    x = torch.randn(4, 5, 16)

    def grads(use_checkpoint):
        ours.zero_grad()
        xi = x.clone().requires_grad_()
        y = torch.utils.checkpoint.checkpoint(ours, xi, use_reentrant=False) if use_checkpoint else ours(xi)
        y.square().sum().backward()
        return [xi.grad] + [p.grad.clone() for p in ours.parameters()]

    plain = grads(False)
    onednn_calls.clear()
    ckpt = grads(True)
    assert len(onednn_calls) == 2 + 2 + 4 and ("gelu", "none") not in onednn_calls  # forward, recompute, backward
    for a, b in zip(plain, ckpt):
        assert torch.equal(a, b)


def test_torch_compile_traces_the_standard_linear():
    ours, ref = _twins(8, 12)
    x = torch.randn(4, 8)
    start = time.perf_counter()
    try:
        compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
        y = compiled(x)
    except Exception as e:  # no working compiler toolchain here: nothing of ours to test
        pytest.skip(f"torch.compile unavailable: {type(e).__name__}")
    assert time.perf_counter() - start < 30
    torch.testing.assert_close(y, ref(x), rtol=0, atol=1e-5)
    y.sum().backward()
    assert ours.weight.grad is not None


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch warns when the mkldnn flags are set
def test_swin_runs_every_linear_on_onednn(onednn_calls):
    model = SwinTransformer(**tiny_kwargs())
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(type(m) is Linear for m in linears)  # qkv, proj, mlp, patch merging and head
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert len(onednn_calls) == 3 * len(linears)  # forward, input and weight gradients of each
    onednn_calls.clear()
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 64, 64))
    assert onednn_calls.count(("gelu", "none")) == sum(isinstance(m, Mlp) for m in model.modules()) == 8
    assert len(onednn_calls) == len(linears)  # one call per layer, fc1 with its GELU


@needs_onednn_bf16
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch warns when the mkldnn flags are set
def test_swin_bf16_inference_runs_every_linear_on_onednn(onednn_calls):
    model = SwinTransformer(**tiny_kwargs()).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(x)
        with torch.backends.mkldnn.flags(enabled=False):
            plain = model(x)  # F.linear under autocast everywhere
    assert len(onednn_calls) == len(linears) and fast.dtype == plain.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), plain.float(), rtol=0, atol=0.05 * plain.float().abs().max().item())
    model.reset_classifier(5)
    assert type(model.head) is Linear
