"""Swin Transformer (Liu et al., 2021): hierarchical vision transformer with shifted windows.

Parameter names equal the official release's, so its checkpoints load without renaming. Tokens stay
channels-last (B, H, W, C) from the patch embedding to the head. Inputs whose size is not a multiple of the
window are padded per block (then shifted, as torchvision and the official detection code do), with masks
built for the runtime size and cached.
"""
import logging
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .attention import WindowAttention
from .linear import Linear, Mlp
from .window import shifted_window_mask, window_partition, window_reverse

log = logging.getLogger(__name__)


class PatchEmbed(nn.Module):
    """Non-overlapping p x p convolution to embed_dim channels, then LayerNorm: (B, C, H, W) -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"Swin expects images of shape (batch, {self.in_chans}, height, width), got {tuple(x.shape)}; "
                f"convert the input or build the model with in_chans={x.shape[1] if x.ndim == 4 else '?'}"
            )
        x = self.proj(x).permute(0, 2, 3, 1)  # B, H/p, W/p, D
        return x if self.norm is None else self.norm(x)


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> LayerNorm(4C) -> Linear(4C, 2C): (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduction(self.norm(merge_2x2(x)))


def merge_2x2(x: torch.Tensor) -> torch.Tensor:
    """Each 2x2 neighbourhood's channels side by side: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C), an odd side
    padded with zeros (as torchvision does)."""
    B, H, W, C = x.shape
    if H % 2 or W % 2:
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H, W = H + H % 2, W + W % 2
    # channel order [x(0::2, 0::2), x(1::2, 0::2), x(0::2, 1::2), x(1::2, 1::2)] as officially, in one copy
    x = x.view(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5)  # B, H/2, W/2, dx, dy, C
    return x.reshape(B, H // 2, W // 2, 4 * C)  # B, H/2, W/2, 4C


class ShiftedWindows(nn.Module):
    """What every Swin block shares: its window (never larger than the map it was built for, and then nothing to
    shift, as officially), the shift of odd blocks, and attention over (shifted) windows of a (B, H, W, C) map
    padded to whole windows, with the shift masks cached per size. Subclasses set `self.attn`."""

    def __init__(self, input_resolution: Tuple[int, int], window_size: int, shifted: bool) -> None:
        super().__init__()
        window_size = min(window_size, *input_resolution)
        self.window = (window_size, window_size)
        self.shift_size = window_size // 2 if shifted else 0
        self._masks: Dict[tuple, torch.Tensor] = {}

    def shift_mask(self, size: Tuple[int, int], shift: Tuple[int, int], device: torch.device) -> torch.Tensor:
        """The (nW, N, N) shift mask for a padded map of this size, built once per size and device."""
        key = (size, shift, device)
        if key not in self._masks:
            if len(self._masks) >= 8:  # input sizes keep changing: keep memory bounded
                self._masks.clear()
            self._masks[key] = shifted_window_mask(size, self.window, shift, device=device)
        return self._masks[key]

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        wh, ww = self.window
        pad_h, pad_w = -H % wh, -W % ww
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # B, Hp, Wp, C
        Hp, Wp = H + pad_h, W + pad_w
        # per axis, a map no larger than one window has nothing to shift (torchvision's rule; at the size the
        # model was built for it equals the official one)
        shift = (self.shift_size if Hp > wh else 0, self.shift_size if Wp > ww else 0)
        mask = self.shift_mask((Hp, Wp), shift, x.device) if any(shift) else None
        x = window_partition(x, self.window, shift)  # B*nW, N, C  (rolled by -shift, as officially)
        x = self.attn(x, mask)
        x = window_reverse(x, self.window, Hp, Wp, shift)  # B, Hp, Wp, C  (rolled back)
        return x[:, :H, :W] if pad_h or pad_w else x


class SwinTransformerBlock(ShiftedWindows):
    """LN -> (shifted) window attention -> residual -> LN -> MLP -> residual, on (B, H, W, C) maps."""

    def __init__(
        self,
        dim: int,
        input_resolution: Tuple[int, int],
        num_heads: int,
        window_size: int,
        shifted: bool,
        mlp_ratio: float,
        qkv_bias: bool,
        qk_scale: Optional[float],
        drop: float,
        attn_drop: float,
        drop_path: float,
        *,
        rel_pos_bias: bool,
        attn_impl: str,
        appearance: bool = True,
    ) -> None:
        super().__init__(input_resolution, window_size, shifted)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(
            dim, num_heads, self.window, qkv_bias, qk_scale, attn_drop, drop,
            rel_pos_bias=rel_pos_bias, appearance=appearance, attn_impl=attn_impl,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """One stage: its blocks (odd ones shifted), then an optional patch merging."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module], use_checkpoint: bool) -> None:
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x if self.downsample is None else self.downsample(x)


# make_block(stage, index in the stage, dim, (H, W) of the stage's map, drop path rate) -> the block
BlockFactory = Callable[[int, int, int, Tuple[int, int], float], nn.Module]


class SwinClassifier(nn.Module):
    """The classifier around a Swin backbone, shared by v1 and v2 (models/swinv2.py): patch embedding, optional
    absolute position embedding, the stages, the final norm, global average pooling and the head. The versions
    differ in their blocks (`make_block`) and patch merging (`merging`); both are built here, in the official
    order of modules, then initialised as officially."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, num_classes: int, embed_dim: int,
                 depths: Sequence[int], window_size: int, drop_rate: float, drop_path_rate: float, ape: bool,
                 patch_norm: bool, use_checkpoint: bool, *, make_block: BlockFactory,
                 merging: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.window_size, self.ape = num_classes, window_size, ape
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim)) if ape else None
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = drop_path_rates(drop_path_rate, depths)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            dim, res = int(embed_dim * 2**i), stage_resolution(grid, i)
            blocks = [make_block(i, j, dim, (res, res), dpr[i][j]) for j in range(depth)]
            downsample = merging(dim) if i < self.num_layers - 1 else None
            self.layers.append(BasicLayer(blocks, downsample, use_checkpoint))
        self.norm = nn.LayerNorm(self.num_features)
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_weights)
        if ape:
            trunc_normal_(self.absolute_pos_embed, std=0.02)

    def no_weight_decay(self) -> Set[str]:
        """Parameter names the optimizer must not decay (official API)."""
        return {"absolute_pos_embed"}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with num_classes outputs (0: no head)."""
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> normalised final token map (B, H/32, W/32, num_features)."""
        x = self.patch_embed(x)  # B, H/4, W/4, D
        if self.absolute_pos_embed is not None:
            x = x + self._pos_embed(x.shape[1], x.shape[2])
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def _pos_embed(self, h: int, w: int) -> torch.Tensor:
        grid = self.img_size // self.patch_size
        pos = self.absolute_pos_embed.view(1, grid, grid, -1)  # 1, grid, grid, D
        if (h, w) != (grid, grid):  # another input size: resample the table (bicubic, as for fine-tuning)
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
            pos = pos.permute(0, 2, 3, 1)  # 1, h, w, D
        return pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean(dim=(1, 2))  # B, num_features
        return self.head(x)


class SwinTransformer(SwinClassifier):
    """Swin Transformer classifier; (B, in_chans, H, W) images -> (B, num_classes) logits."""

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
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        *,
        shift: bool = True,
        rel_pos_bias: bool = True,
        appearance: bool = True,
        attn_impl: str = "eager",
    ) -> None:
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} must have the same length")

        def make_block(stage: int, index: int, dim: int, resolution: Tuple[int, int],
                       drop_path: float) -> SwinTransformerBlock:
            return SwinTransformerBlock(dim, resolution, num_heads[stage], window_size, shift and index % 2 == 1,
                                        mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate, drop_path,
                                        rel_pos_bias=rel_pos_bias, appearance=appearance, attn_impl=attn_impl)

        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depths, window_size, drop_rate,
                         drop_path_rate, ape, patch_norm, use_checkpoint, make_block=make_block,
                         merging=PatchMerging)
        for module in self.modules():
            if isinstance(module, WindowAttention) and module.relative_position_bias_table is not None:
                trunc_normal_(module.relative_position_bias_table, std=0.02)

    def no_weight_decay_keywords(self) -> Set[str]:
        """Name fragments of parameters the optimizer must not decay (official API)."""
        return {"relative_position_bias_table"}

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch every block between the "eager" and "sdpa" attention kernels (same results)."""
        for module in self.modules():
            if isinstance(module, WindowAttention):
                if attn_impl not in ("eager", "sdpa"):
                    raise ValueError(f"attn_impl must be 'eager' or 'sdpa', got {attn_impl!r}")
                module.attn_impl = attn_impl


def stage_resolution(grid: int, stage: int) -> int:
    """The side of the map stage `stage` runs on, for a grid x grid patch map: PatchMerging pads an odd side, so
    ceil(grid / 2**stage) (timm builds for floor, so a 7x7 map's next stage there gets 3x3 windows over a padded 6x6
    copy of its 4x4 map)."""
    return -(-grid // 2**stage)


def drop_path_rates(rate: float, depths: Sequence[int]) -> List[List[float]]:
    """Stochastic depth growing linearly from 0 to `rate` over all blocks, as officially, split per stage."""
    dpr = torch.linspace(0, rate, sum(depths), device="cpu").tolist()
    return [dpr[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]


def init_weights(module: nn.Module) -> None:
    # official init: truncated normal for linear weights, zero biases, unit LayerNorm
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
