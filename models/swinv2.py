"""Swin Transformer V2 (Liu et al., 2022): Swin with the changes that let it scale in capacity and resolution.

Against v1 (models/swin.py): scaled cosine attention, cos(q, k) times a learned per-head scale clamped at 100,
instead of the dot product; a continuous relative position bias, 16 * sigmoid of a small MLP (cpb_mlp) over
log-spaced relative coordinates, instead of a table, so weights trained at one window size transfer to another
(pretrained_window_sizes keeps the coordinates of the pre-training window); res-post-norm, the LayerNorm applied
to each residual branch's output instead of its input; PatchMerging normalising after the reduction; only q and
v have a bias.

Parameter names equal the official release's (microsoft/Swin-Transformer, models/swin_transformer_v2.py), so its
checkpoints load unchanged; the derived buffers (relative_coords_table, relative_position_index, the shift
masks) are never saved, and models.weights skips them in a checkpoint. `swinv2_from_timm` converts timm's
layout. Tokens stay channels-last (B, H, W, C). Inputs whose size is not a multiple of the window are padded
per block, then shifted, as models/swin.py and torchvision do.
"""
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from .attention import ATTN_IMPLS, forced_impl
from .linear import Linear, Mlp, onednn_eligible, onednn_linear
from .swin import ShiftedWindows, SwinClassifier, merge_2x2
from .window import relative_position_index

log = logging.getLogger(__name__)

LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # the cosine similarities are scaled by at most 100
_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask")  # derived, never loaded


def relative_coords_table(window: Tuple[int, int], pretrained_window: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Log-spaced relative coordinates, the input of the continuous position bias: (1, 2wh-1, 2ww-1, 2).

    Offsets (dy, dx) are divided by (pretrained window - 1), or by (window - 1) when no pre-training window is
    given, so a window transferred to a larger size extrapolates past the coordinates it was trained on
    instead of squeezing them; then scaled to [-8, 8] and mapped to sign(x) * log2(1 + |x|) / log2(8), which
    keeps the range of that extrapolation small. A window of 1 has the offset 0 only (no division by zero).
    """
    norm = pretrained_window if pretrained_window[0] > 0 else window
    axes = [torch.arange(-(w - 1), w, dtype=torch.float32) / max(n - 1, 1)
            for w, n in zip(window, norm)]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0) * 8  # 1, 2wh-1, 2ww-1, 2
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


class WindowAttentionV2(nn.Module):
    """Scaled cosine multi-head self-attention inside windows of wh x ww tokens, with continuous position bias.

    Input (B * nW, N, C) windows, N = wh * ww; output the same shape. The optional mask (nW, N, N) is the
    additive shift mask of the block (see window.shifted_window_mask).
    """

    def __init__(self, dim: int, num_heads: int, window: Tuple[int, int], qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, pretrained_window: Tuple[int, int] = (0, 0),
                 attn_impl: str = "auto") -> None:
        super().__init__()
        if attn_impl not in ("auto",) + ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of auto, {', '.join(ATTN_IMPLS)}, got {attn_impl!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window = dim, num_heads, tuple(window)
        self.pretrained_window = tuple(pretrained_window)
        self.attn_impl = attn_impl
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     Linear(512, num_heads, bias=False))
        # derived from the window sizes, so never saved and never required when loading
        self.register_buffer("relative_coords_table", relative_coords_table(self.window, self.pretrained_window),
                             persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(self.window), persistent=False)
        self.qkv = Linear(dim, dim * 3, bias=False)
        # only queries and values have a bias, as officially (k's third of the qkv bias stays zero)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def scale(self) -> torch.Tensor:
        """Per-head factor of the cosine similarities: exp(logit_scale) clamped at 100, (heads, 1, 1)."""
        return torch.clamp(self.logit_scale, max=LOGIT_SCALE_MAX).exp()

    def relative_bias(self) -> torch.Tensor:
        """The bias of every head for every token pair, 16 * sigmoid(cpb_mlp(coordinates)): (heads, N, N)."""
        n = self.window[0] * self.window[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)  # (2wh-1)*(2ww-1), heads
        bias = table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)  # heads, N, N
        return 16 * torch.sigmoid(bias)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """The q, k, v projections (B * nW, N, 3C), biased by q_bias, zeros and v_bias."""
        weight = self.qkv.weight
        bias = None if self.q_bias is None else torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        if onednn_eligible(x, weight):  # the float32 CPU path models.linear.Linear takes
            return onednn_linear(x, weight, bias)
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) or None."""
        b_, n, c = x.shape
        heads = self.num_heads
        qkv = self._qkv(x).reshape(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)  # 3, B*nW, heads, N, hd
        q, k, v = qkv.unbind(0)  # each B*nW, heads, N, hd
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # cosine similarity: unit queries and keys
        bias = self.relative_bias().unsqueeze(0)  # 1, heads, N, N
        if use_sdpa(x, self.attn_impl):
            x = self._sdpa(q * self.scale(), k, v, bias, mask)
        else:
            attn = q @ k.transpose(-2, -1) * self.scale() + bias  # B*nW, heads, N, N
            if mask is not None:
                nw = mask.shape[0]
                attn = (attn.view(-1, nw, heads, n, n) + mask.unsqueeze(1)).view(b_, heads, n, n)
            attn = F.dropout(attn.softmax(dim=-1), p=self.attn_drop if self.training else 0.0)
            x = attn @ v  # B*nW, heads, N, hd
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b_, n, c)))

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              mask: Optional[torch.Tensor]) -> torch.Tensor:
        """softmax(q k^T + bias + mask) v in one fused call (q already scaled); windows folded into heads so that the
        (1, nW * heads, N, N) additive mask broadcasts over the images without being expanded per image."""
        b_, heads, n, hd = q.shape
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).reshape(1, nw * heads, n, n)  # nW, heads, N, N -> 1, nW*heads, N, N
            q, k, v = (t.reshape(-1, nw * heads, n, hd) for t in (q, k, v))  # B, nW*heads, N, hd
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return x.reshape(b_, heads, n, hd)


def use_sdpa(x: torch.Tensor, attn_impl: str = "auto") -> bool:
    """The kernel choice (MODEL.SWINV2.ATTN_IMPL, unless attention.forced_kernel overrides it): "auto" runs the fused
    scaled_dot_product_attention on CUDA (its memory-efficient kernel takes the additive bias, so the (N, N)
    attention matrix is not kept for backward) and the eager products elsewhere (on CPU they are as fast, and FLOP
    counting on the meta device reads them); "eager" and "sdpa" run that kernel on every device."""
    impl = forced_impl() or attn_impl
    return x.is_cuda if impl == "auto" else impl == "sdpa"


class SwinTransformerV2Block(ShiftedWindows):
    """(Shifted) window attention -> LN -> residual -> MLP -> LN -> residual (res-post-norm), on (B, H, W, C)."""

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int, window_size: int, shifted: bool,
                 mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float, drop_path: float,
                 pretrained_window_size: int, attn_impl: str = "auto") -> None:
        super().__init__(input_resolution, window_size, shifted)
        self.attn = WindowAttentionV2(dim, num_heads, self.window, qkv_bias, attn_drop, drop,
                                      pretrained_window=(pretrained_window_size, pretrained_window_size),
                                      attn_impl=attn_impl)
        self.norm1 = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.norm1(self._attention(x)))
        return x + self.drop_path(self.norm2(self.mlp(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> Linear(4C, 2C) -> LayerNorm(2C): (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.reduction(merge_2x2(x)))


class SwinTransformerV2(SwinClassifier):
    """Swin Transformer V2 classifier; (B, in_chans, H, W) images -> (B, num_classes) logits."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        pretrained_window_sizes: Optional[Sequence[int]] = None,
        attn_impl: str = "auto",
    ) -> None:
        pretrained_window_sizes = tuple(pretrained_window_sizes or (0,) * len(depths))  # 0: this model's window
        if not len(depths) == len(num_heads) == len(pretrained_window_sizes):
            raise ValueError(f"depths {tuple(depths)}, num_heads {tuple(num_heads)} and pretrained_window_sizes "
                             f"{pretrained_window_sizes} must have the same length")

        def make_block(stage: int, index: int, dim: int, resolution: Tuple[int, int],
                       drop_path: float) -> SwinTransformerV2Block:
            return SwinTransformerV2Block(dim, resolution, num_heads[stage], window_size, index % 2 == 1, mlp_ratio,
                                          qkv_bias, drop_rate, attn_drop_rate, drop_path,
                                          pretrained_window_sizes[stage], attn_impl=attn_impl)

        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depths, window_size, drop_rate,
                         drop_path_rate, ape, patch_norm, use_checkpoint, make_block=make_block,
                         merging=PatchMerging)
        for module in self.modules():  # official init: every block starts as the identity (zero post-norms)
            if isinstance(module, SwinTransformerV2Block):
                for norm in (module.norm1, module.norm2):
                    nn.init.zeros_(norm.weight)
                    nn.init.zeros_(norm.bias)

    def no_weight_decay_keywords(self) -> Set[str]:
        """Name fragments of parameters the optimizer must not decay (official API): the position bias MLP and
        the logit scales."""
        return {"cpb_mlp", "logit_scale"}


@dataclass(frozen=True)
class SwinV2Variant:
    """Hyperparameters of one official SwinV2 model, its exact parameter count (with its own head) and the name
    of the same model in timm."""

    embed_dim: int
    depths: Tuple[int, ...]
    num_heads: Tuple[int, ...]
    window_size: int
    img_size: int
    params: int
    timm_name: str
    num_classes: int = 1000
    pretrained_window_sizes: Tuple[int, ...] = (0, 0, 0, 0)
    patch_size: int = 4

    def kwargs(self) -> Dict[str, Any]:
        """SwinTransformerV2 keyword arguments of this variant as released (architecture and classes)."""
        return dict(embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads,
                    window_size=self.window_size, img_size=self.img_size, patch_size=self.patch_size,
                    num_classes=self.num_classes, pretrained_window_sizes=self.pretrained_window_sizes)


_T, _S = (2, 2, 6, 2), (2, 2, 18, 2)
_H96, _H128, _H192 = (3, 6, 12, 24), (4, 8, 16, 32), (6, 12, 24, 48)
_FT = (12, 12, 12, 6)  # the windows of the 192-pixel IN-22K pre-training (6: the 6x6 last stage)
_IN22K = 21841

# The official release's models (its names; the window12to16 / 12to24 ones are fine-tuned from the 22k ones)
SWINV2_ZOO: Dict[str, SwinV2Variant] = {
    "swinv2_tiny_patch4_window8_256": SwinV2Variant(96, _T, _H96, 8, 256, 28_347_154, "swinv2_tiny_window8_256"),
    "swinv2_tiny_patch4_window16_256": SwinV2Variant(96, _T, _H96, 16, 256, 28_347_154, "swinv2_tiny_window16_256"),
    "swinv2_small_patch4_window8_256": SwinV2Variant(96, _S, _H96, 8, 256, 49_728_418, "swinv2_small_window8_256"),
    "swinv2_small_patch4_window16_256": SwinV2Variant(96, _S, _H96, 16, 256, 49_728_418,
                                                      "swinv2_small_window16_256"),
    "swinv2_base_patch4_window8_256": SwinV2Variant(128, _S, _H128, 8, 256, 87_918_816, "swinv2_base_window8_256"),
    "swinv2_base_patch4_window16_256": SwinV2Variant(128, _S, _H128, 16, 256, 87_918_816,
                                                     "swinv2_base_window16_256"),
    "swinv2_base_patch4_window12_192_22k": SwinV2Variant(128, _S, _H128, 12, 192, 109_280_841,
                                                         "swinv2_base_window12_192", num_classes=_IN22K),
    "swinv2_large_patch4_window12_192_22k": SwinV2Variant(192, _S, _H192, 12, 192, 228_772_549,
                                                          "swinv2_large_window12_192", num_classes=_IN22K),
    "swinv2_base_patch4_window12to16_192to256_22kto1k_ft": SwinV2Variant(
        128, _S, _H128, 16, 256, 87_918_816, "swinv2_base_window12to16_192to256", pretrained_window_sizes=_FT),
    "swinv2_base_patch4_window12to24_192to384_22kto1k_ft": SwinV2Variant(
        128, _S, _H128, 24, 384, 87_918_816, "swinv2_base_window12to24_192to384", pretrained_window_sizes=_FT),
    "swinv2_large_patch4_window12to16_192to256_22kto1k_ft": SwinV2Variant(
        192, _S, _H192, 16, 256, 196_739_932, "swinv2_large_window12to16_192to256", pretrained_window_sizes=_FT),
    "swinv2_large_patch4_window12to24_192to384_22kto1k_ft": SwinV2Variant(
        192, _S, _H192, 24, 384, 196_739_932, "swinv2_large_window12to24_192to384", pretrained_window_sizes=_FT),
}


def list_swinv2() -> List[str]:
    """Names of every official SwinV2 model."""
    return list(SWINV2_ZOO)


def create_swinv2(name: str, **overrides: Any) -> SwinTransformerV2:
    """Build an official SwinV2 model by its name, with its class count; keyword overrides replace table entries."""
    if name not in SWINV2_ZOO:
        raise KeyError(f"unknown SwinV2 model {name!r}; official models: {', '.join(SWINV2_ZOO)}")
    return SwinTransformerV2(**{**SWINV2_ZOO[name].kwargs(), **overrides})


def swinv2_from_timm(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A timm (>= 0.9) SwinTransformerV2 state dict in the official layout.

    timm merges patches at the START of stages 1..3 (layers.i.downsample is the official layers.i-1.downsample),
    wraps the classifier in head.fc, and names stages layers_i in features_only models; every other name is the
    official one. Derived buffers, should a checkpoint hold them, are dropped.
    """
    out = {}
    for k, v in state_dict.items():
        if k.rsplit(".", 1)[-1] in _BUFFERS:
            continue
        k = re.sub(r"^layers_(\d+)\.", r"layers.\1.", k)
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
        out[re.sub(r"^head\.fc\.", "head.", k)] = v
    return out
