"""Window multi-head self-attention with relative position bias (W-MSA / SW-MSA).

Two kernels give the same result: "eager" follows the official operation order (q * scale, q @ k^T, + bias,
+ mask, softmax, @ v) and "sdpa" calls F.scaled_dot_product_attention with the bias and the shift mask
combined into one additive mask. The combined bias is cached per (mask, dtype, device, table version) and
only rebuilt when the table must receive gradients, so inference pays for the table gather once.
"""
import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear
from .window import relative_position_index

log = logging.getLogger(__name__)

ATTN_IMPLS = ("eager", "sdpa")
_CACHE_SIZE = 8  # distinct (size, dtype, device) entries kept per block; more means sizes keep changing


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
        self._cache: Dict[tuple, torch.Tensor] = {}

    def relative_bias(self) -> torch.Tensor:
        """The bias of every head for every token pair: (heads, N, N), differentiable w.r.t. the table."""
        n = self.window[0] * self.window[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # N*N, heads
        return bias.view(n, n, -1).permute(2, 0, 1)  # heads, N, N

    def _table_trains(self) -> bool:
        """Whether this forward must keep the bias table in the autograd graph."""
        table = self.relative_position_bias_table
        return table is not None and table.requires_grad and torch.is_grad_enabled()

    def attn_bias(
        self, mask: Optional[torch.Tensor], mask_key: tuple, dtype: torch.dtype
    ) -> Optional[torch.Tensor]:
        """Relative bias plus shift mask as one additive tensor: (nW or 1, heads or 1, N, N), or None."""
        table = self.relative_position_bias_table
        if table is None:
            return None if mask is None else mask.to(dtype).unsqueeze(1)  # nW, 1, N, N
        if self._table_trains():
            return self._combine(mask, dtype)  # must stay in the autograd graph: not cached
        if torch.compiler.is_compiling():
            return self._combine(mask, dtype)  # a Python dict lookup would break the graph; the compiler folds it
        # a new table object, an in-place update (optimizer step, load_state_dict) or a move invalidates the entry
        key = (mask_key, dtype, id(table), table._version, table.device, table.dtype)
        bias = self._cache.get(key)
        if bias is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            with torch.no_grad():
                bias = self._cache[key] = self._combine(mask, dtype)
        return bias

    def _combine(self, mask: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        bias = self.relative_bias().unsqueeze(0)  # 1, heads, N, N
        if mask is not None:
            bias = bias + mask.unsqueeze(1)  # nW, heads, N, N
        return bias.to(dtype).contiguous()  # so the shifted SDPA path can view it as (1, nW * heads, N, N)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, mask_key: tuple = ()) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) or None; mask_key identifies the mask for the cache."""
        b_, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # 3, B*nW, heads, N, hd
        # On CPU the eager products win twice: SDPA has no fused kernel for a mask that needs a gradient (it
        # would run its slower math kernel), and in bf16 its flash kernel is slower than eager for windows this
        # small (Swin-T inference, batch 8, 2 threads: 43 ms in SDPA against 35 ms for eager's softmax + bmm)
        cpu_eager = qkv.device.type == "cpu" and (self._table_trains() or qkv.dtype != torch.float32)
        if self.attn_impl == "sdpa" and not cpu_eager:
            x = self._sdpa(qkv, mask, mask_key)
        else:
            x = self._eager(qkv, mask, mask_key)
        x = x.transpose(1, 2).reshape(b_, n, c)  # B*nW, N, C
        return self.proj_drop(self.proj(x))

    def _eager(self, qkv: torch.Tensor, mask: Optional[torch.Tensor], mask_key: tuple) -> torch.Tensor:
        # the official order; the bias stays in the table's dtype, so under autocast the logits are promoted to
        # float32 before the softmax exactly as officially
        _, b_, heads, n, _ = qkv.shape
        q, k, v = qkv.unbind(0)  # each B*nW, heads, N, hd
        table = self.relative_position_bias_table
        bias = self.attn_bias(mask, mask_key, table.dtype if table is not None else torch.float32)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # B*nW, heads, N, N
        if bias is not None:
            nw = bias.shape[0]
            # under autocast: bf16 logits + float32 bias -> float32, as one widening copy and an in-place add
            # (the same values; torch's mixed-dtype broadcasting add is several times slower on CPU)
            attn = attn.to(torch.promote_types(attn.dtype, bias.dtype)).view(-1, nw, heads, n, n)
            attn = (attn.add_(bias) if attn.dtype != q.dtype else attn + bias).view(b_, heads, n, n)
        attn = F.dropout(attn.softmax(dim=-1), p=self.attn_drop if self.training else 0.0)
        return attn @ v  # B*nW, heads, N, hd

    def _sdpa(self, qkv: torch.Tensor, mask: Optional[torch.Tensor], mask_key: tuple) -> torch.Tensor:
        _, b_, heads, n, hd = qkv.shape
        q, k, v = qkv.unbind(0)  # each B*nW, heads, N, hd
        bias = self.attn_bias(mask, mask_key, q.dtype)  # one additive mask in q's dtype
        if bias is not None and bias.shape[0] > 1:
            # fold windows into heads, (B, nW * heads, N, hd), so the (1, nW * heads, N, N) mask view broadcasts
            # over images: fused kernels take 4-D inputs only, and the mask is never expanded per image
            nw = bias.shape[0]
            q, k, v = qkv.reshape(3, -1, nw * heads, n, hd).unbind(0)  # B, nW*heads, N, hd
            bias = bias.expand(nw, heads, n, n).reshape(1, nw * heads, n, n)  # 1, nW*heads, N, N (a view with bias)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0,
                                           scale=self.scale)
        return x.reshape(b_, heads, n, hd)  # B*nW, heads, N, hd
