"""Window multi-head self-attention with relative position bias (W-MSA / SW-MSA).

Two kernels give the same result: "eager" follows the official operation order (q * scale, q @ k^T, + bias,
+ mask, softmax, @ v) and "sdpa" calls F.scaled_dot_product_attention with the bias and the shift mask
combined into one additive mask. Which one a forward runs is `choose_kernel`'s decision, kept apart from the
maths. In no-grad forwards on CPU the combined bias comes from a `BiasCache`, so inference pays for the table
gather once per table value.
"""
import logging
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear
from .window import relative_position_index

log = logging.getLogger(__name__)

ATTN_IMPLS = ("eager", "sdpa")
_forced: Optional[str] = None  # set by forced_kernel()


@contextmanager
def forced_kernel(attn_impl: str) -> Iterator[None]:
    """Inside the block every WindowAttention runs `attn_impl`, whatever it was built with (FLOP counting runs
    "eager" so that FlopCounterMode sees the attention products)."""
    global _forced
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
    before, _forced = _forced, attn_impl
    try:
        yield
    finally:
        _forced = before


def forced_impl() -> Optional[str]:
    """The kernel forced_kernel() imposes now (None: each module's own choice)."""
    return _forced


def choose_kernel(attn_impl: str, device_type: str, dtype: torch.dtype, bias_trains: bool) -> str:
    """The kernel one forward runs: `attn_impl` (or the forced one), except that on CPU the eager products win
    twice: SDPA has no fused kernel for a bias that needs a gradient (it would run its slower math kernel), and in
    low precision its flash kernel is slower than eager for windows this small (benchmarks/README.md)."""
    impl = _forced or attn_impl
    if impl == "sdpa" and device_type == "cpu" and (bias_trains or dtype != torch.float32):
        return "eager"
    return impl


class BiasCache:
    """Combined bias (relative bias + shift mask) per (mask, dtype), for forwards that do not train the table.

    What invalidates an entry: any change of the table's values, its device or dtype, or another mask object.
    An entry keeps a copy of the table it was built from and is served only while the table still equals it:
    the table's version counter cannot be trusted, since fused optimizer steps (AdamW/SGD fused=True) write
    parameters without bumping it. The check compares (2M-1)^2 x heads numbers on the host, so the cache is
    used on CPU only; on an accelerator that comparison would be a device-to-host sync per block, and the
    gather it saves is a few small asynchronous kernels.
    """

    max_entries = 8  # distinct (mask, dtype) entries; more means input sizes keep changing

    def __init__(self) -> None:
        self._entries: Dict[tuple, Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]] = {}

    @staticmethod
    def applies(table: torch.Tensor) -> bool:
        """Whether a cached bias may be used for this table now: a CPU table, no tracing by torch.compile
        (a dict lookup would break the graph; the compiler folds the gather itself)."""
        return table.device.type == "cpu" and not torch.compiler.is_compiling()

    def get(self, table: torch.Tensor, mask: Optional[torch.Tensor], dtype: torch.dtype,
            build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached bias for (mask, dtype) if it was built from a table equal to `table`, else `build()`."""
        key = (id(mask), dtype)
        entry = self._entries.get(key)
        if entry is not None:
            snapshot, cached_mask, bias = entry
            # the entry holds the mask object, so its id cannot be reused by another mask while it lives
            if (cached_mask is mask and snapshot.dtype == table.dtype and snapshot.device == table.device
                    and torch.equal(snapshot, table)):
                return bias
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        with torch.no_grad():
            bias = build()
            self._entries[key] = (table.detach().clone(), mask, bias)
        return bias

    def clear(self) -> None:
        self._entries.clear()


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows of wh x ww tokens.

    Input (B * nW, N, C) windows, N = wh * ww; output the same shape. The optional mask (nW, N, N) is the
    additive shift mask of the block (see window.shifted_window_mask).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Tuple[int, int],
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        rel_pos_bias: bool = True,
        appearance: bool = True,
        attn_impl: str = "eager",
    ) -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window = dim, num_heads, tuple(window)
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim**-0.5
        self.attn_impl = attn_impl
        # False: the attention weights come from the bias (and mask) alone, softmax(B) @ v, without the query-key
        # (appearance) term; the paper's ablation "rel. pos. w/o app." (q and k are still computed, unused)
        self.appearance = appearance
        if rel_pos_bias:
            wh, ww = self.window
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
            # derived from the window size, so never saved and never required when loading
            self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        else:
            self.relative_position_bias_table = None
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.bias_cache = BiasCache()

    def relative_bias(self) -> torch.Tensor:
        """The bias of every head for every token pair: (heads, N, N), differentiable w.r.t. the table."""
        n = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # N*N, heads
        return bias.view(n, n, -1).permute(2, 0, 1)  # heads, N, N

    def _table_trains(self) -> bool:
        """Whether this forward must keep the bias table in the autograd graph."""
        table = self.relative_position_bias_table
        return table is not None and table.requires_grad and torch.is_grad_enabled()

    def attn_bias(self, mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        """Relative bias plus shift mask as one additive tensor: (nW or 1, heads or 1, N, N), or None."""
        table = self.relative_position_bias_table
        if table is None:
            return None if mask is None else mask.to(dtype).unsqueeze(1)  # nW, 1, N, N
        if self._table_trains() or not BiasCache.applies(table):
            return self._combine(mask, dtype)  # in the autograd graph when the table trains
        return self.bias_cache.get(table, mask, dtype, lambda: self._combine(mask, dtype))

    def _combine(self, mask: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        bias = self.relative_bias().unsqueeze(0)  # 1, heads, N, N
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # nW, heads, N, N
        return bias.to(dtype).contiguous()  # so the shifted SDPA path can view it as (1, nW * heads, N, N)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) or None."""
        b_, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # 3, B*nW, heads, N, hd
        if self.appearance and choose_kernel(self.attn_impl, qkv.device.type, qkv.dtype,
                                             self._table_trains()) == "sdpa":
            x = self._sdpa(qkv, mask)
        else:
            x = self._eager(qkv, mask)
        x = x.transpose(1, 2).reshape(b_, n, c)  # B*nW, N, C
        return self.proj_drop(self.proj(x))

    def _eager(self, qkv: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        # the official order; the bias stays in the table's dtype, so under autocast the logits are promoted to
        # float32 before the softmax exactly as officially
        _, b_, heads, n, _ = qkv.shape
        q, k, v = qkv.unbind(0)  # each B*nW, heads, N, hd
        table = self.relative_position_bias_table
        bias = self.attn_bias(mask, table.dtype if table is not None else torch.float32)
        if self.appearance:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # B*nW, heads, N, N
        else:
            attn = q.new_zeros(b_, heads, n, n)
        if bias is not None:
            nw = bias.shape[0]
            # under autocast: bf16 logits + float32 bias -> float32, as one widening copy and an in-place add
            # (the same values; torch's mixed-dtype broadcasting add is several times slower on CPU)
            attn = attn.to(torch.promote_types(attn.dtype, bias.dtype)).view(-1, nw, heads, n, n)
            attn = (attn.add_(bias) if attn.dtype != q.dtype else attn + bias).view(b_, heads, n, n)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attn_drop if self.training else 0.0)
        return attn @ v  # B*nW, heads, N, hd

    def _sdpa(self, qkv: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        _, b_, heads, n, hd = qkv.shape
        q, k, v = qkv.unbind(0)  # each B*nW, heads, N, hd
        bias = self.attn_bias(mask, q.dtype)  # one additive mask in q's dtype
        if bias is not None and bias.shape[0] > 1:
            # fold windows into heads, (B, nW * heads, N, hd), so the (1, nW * heads, N, N) mask view broadcasts
            # over images: fused kernels take 4-D inputs only, and the mask is never expanded per image
            nw = bias.shape[0]
            q, k, v = qkv.reshape(3, -1, nw * heads, n, hd).unbind(0)  # B, nW*heads, N, hd
            bias = bias.expand(nw, heads, n, n).reshape(1, nw * heads, n, n)  # 1, nW*heads, N, N (a view with bias)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)
        return x.reshape(b_, heads, n, hd)  # B*nW, heads, N, hd
