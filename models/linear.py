"""nn.Linear and the transformer MLP with CPU matmuls routed through oneDNN.

In float32 on CPU, F.linear runs on MKL's sgemm, which with AVX-512 kernels (measured on AMD EPYC) reaches about
half of what oneDNN's inner-product kernels reach for the same shapes; with AVX2 kernels it is the other way
round (benchmarks/README.md). So where torch runs AVX-512 kernels, `Linear` calls oneDNN directly for the forward
and both gradients when that is safe (see `onednn_eligible`) and falls back to F.linear otherwise, so
other dtypes and devices, torch.compile and dispatch modes (FLOP counting, fake tensors) see the usual ops.
On CPUs with native bf16, inference under bf16 autocast (nothing for autograd to record, see
`onednn_bf16_eligible`) runs on oneDNN, with the operands cast to bf16 as autocast casts them and the bias (and
GELU in `Mlp`) applied inside the matmul instead of as separate passes over the output; training under autocast
keeps F.linear.
Parameters, initialisation and state_dict keys are those of nn.Linear; results agree with it to rounding.
`torch.backends.mkldnn.flags(enabled=False)` turns the oneDNN path off.
"""
import functools
import logging
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from .cpu import cpu_bf16_native, cpu_capability

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def onednn_available() -> bool:
    """Whether this torch build has oneDNN and its fused linear op (mkldnn::_linear_pointwise)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_fp32_pays() -> bool:
    """Whether fp32 linears are faster on oneDNN than on F.linear here: with AVX-512 kernels (not with AVX2, nor
    on CPUs where it was never measured)."""
    return cpu_capability().startswith("AVX512")


def _onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """What both oneDNN paths need: non-empty CPU operands (oneDNN rejects empty ones), not inside torch.compile
    tracing or a torch dispatch mode (they only know the standard ops), oneDNN enabled and built in."""
    return (
        x.device.type == "cpu" and weight.device.type == "cpu"
        and x.numel() > 0 and weight.numel() > 0
        and not torch.compiler.is_compiling()
        and not is_in_torch_dispatch_mode()
        and torch.backends.mkldnn.enabled
        and onednn_available()
    )


def onednn_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when a linear layer on x may run on oneDNN with the same result as F.linear, and gains from it:
    float32 input and weight, no CPU autocast (it must see F.linear to cast it), `_onednn_usable` and
    `onednn_fp32_pays`."""
    return (
        x.dtype == torch.float32 and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and _onednn_usable(x, weight)
        and onednn_fp32_pays()
    )


def onednn_bf16_eligible(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """True when a linear layer on x runs under CPU bf16 autocast with nothing for autograd to record (inference):
    oneDNN may then take the bf16 casts of x, weight and bias that autocast would give F.linear."""
    return (
        x.dtype in (torch.float32, torch.bfloat16) and weight.dtype == torch.float32
        and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and not _records_graph(x, weight, bias)
        and _onednn_usable(x, weight)
        and cpu_bf16_native()  # where oneDNN only emulates bf16 (or is limited to AVX2) F.linear stays
    )


def _bf16_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], attr: str = "none",
                 algorithm: str = "") -> torch.Tensor:
    """The oneDNN linear (+ fused pointwise op) on the bf16 casts of the operands; bf16 out, as under autocast."""
    bf16 = torch.bfloat16
    return onednn_linear(x.to(bf16), weight.to(bf16), None if bias is None else bias.to(bf16), attr, algorithm)


def _lp(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, attr: str = "none",
        algorithm: str = "") -> torch.Tensor:
    # x (M, K) @ weight (N, K)^T + bias, then the fused pointwise attr ("none" or "gelu" with algorithm
    # "none" = exact erf GELU, "tanh" = the tanh approximation)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


class _OneDNNLinear(torch.autograd.Function):
    """y = x @ W^T + b on 2-D contiguous float32 CPU tensors, with oneDNN for the forward and the gradients."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return _lp(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs: Tuple, output: torch.Tensor) -> None:
        x, weight, _ = inputs
        need_x, need_w = ctx.needs_input_grad[:2]
        # keep only what the requested gradients need, as autograd does for F.linear
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad = grad.contiguous()  # a gradient may arrive as any view (expanded, transposed)
        grad_x = grad_w = grad_b = None
        if torch.is_grad_enabled():
            # create_graph=True: the oneDNN op has no derivative, so build the graph from differentiable ops
            if need_x:
                grad_x = grad @ weight
            if need_w:
                grad_w = grad.t() @ x
        else:
            if need_x:
                grad_x = _lp(grad, weight.t())  # (M, N) @ (N, K)
            if need_w:
                out_features, in_features = grad.shape[1], x.shape[1]
                # the orientation with the larger output dimension in the M role is faster in oneDNN
                if out_features >= in_features:
                    grad_w = _lp(x.t(), grad.t()).t()  # (K, M) @ (M, N), transposed to (N, K)
                else:
                    grad_w = _lp(grad.t(), x.t())  # (N, M) @ (M, K)
        if need_b:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def _records_graph(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether autograd would record a linear layer on these operands."""
    return torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], attr: str = "none",
                  algorithm: str = "") -> torch.Tensor:
    """F.linear(x, weight, bias) through oneDNN for inputs of any leading shape; call only when eligible.

    A pointwise `attr` other than "none" (e.g. "gelu", see `_lp`) is fused into the call; it has no backward,
    so it is for operands autograd does not record.
    """
    # oneDNN is given plain row-major operands only; the copies are autograd ops, so gradients stay exact
    x2 = x.reshape(-1, x.shape[-1]).contiguous()  # M, K
    weight = weight.contiguous()
    if _records_graph(x2, weight, bias):
        if attr != "none":
            raise RuntimeError(f"the fused oneDNN linear + {attr} has no backward; call it without autograd")
        y = _OneDNNLinear.apply(x2, weight, bias)
    else:
        y = _lp(x2, weight, bias, attr, algorithm)
    return y.view(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same parameters, init and state_dict) whose fp32 CPU forward and backward run on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_eligible(x, self.weight):
            return onednn_linear(x, self.weight, self.bias)
        if onednn_bf16_eligible(x, self.weight, self.bias):
            return _bf16_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, with timm Mlp's attribute and state_dict names.

    When no gradient is needed and fc1 runs on oneDNN (fp32, or bf16 under CPU autocast), fc1 and the (exact or
    tanh) GELU are one fused call.
    """

    def __init__(self, in_features: int, hidden_features: Optional[int] = None,
                 out_features: Optional[int] = None, drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fuse = self._can_fuse(x)
        if fuse == "fp32":
            x = onednn_linear(x, self.fc1.weight, self.fc1.bias, "gelu", self.act.approximate)
        elif fuse == "bf16":
            x = _bf16_linear(x, self.fc1.weight, self.fc1.bias, "gelu", self.act.approximate)
        else:
            x = self.act(self.fc1(x))
        return self.drop2(self.fc2(self.drop1(x)))

    def _can_fuse(self, x: torch.Tensor) -> str:
        """"fp32" or "bf16" (the oneDNN path fc1 may fuse GELU on), or "" (run fc1 and act as modules)."""
        # the fused op has no backward: only when autograd would record nothing for fc1 and the activation;
        # hooks on fc1 or act expect to see their own calls, which the fused op would skip
        w, b = self.fc1.weight, self.fc1.bias
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (self.fc1, self.act))
        if (_records_graph(x, w, b) or hooked or type(self.fc1) is not Linear or type(self.act) is not nn.GELU
                or self.act.approximate not in ("none", "tanh")):
            return ""
        return "fp32" if onednn_eligible(x, w) else "bf16" if onednn_bf16_eligible(x, w, b) else ""
