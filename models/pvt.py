"""Pyramid Vision Transformer v1 (Wang et al., 2021), a baseline of the Swin paper's comparison table.

Four stages of global attention whose keys and values come from a spatially reduced map: stage i embeds its input
with a p x p patch convolution (p = 4, then 2), adds a learned position embedding and runs blocks whose attention
shrinks the key/value map by sr_ratio (a strided convolution and a LayerNorm). The last stage prepends a class token,
whose final feature feeds the head. Parameter names equal the official release's (patch_embed1, pos_embed1,
block1.0.attn.sr, ...), so its checkpoints load unchanged. timm has PVT v2 only, a different network.
"""
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .linear import Linear, Mlp
from .swin import drop_path_rates, init_weights

log = logging.getLogger(__name__)


class PatchEmbed(nn.Module):
    """p x p convolution with stride p, then LayerNorm: (B, C, H, W) -> (B, H/p * W/p, D) and (H/p, W/p)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.grid = (img_size // patch_size, img_size // patch_size)  # the size the position embedding is for
        self.num_patches = self.grid[0] * self.grid[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.proj(x)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


class Attention(nn.Module):
    """Multi-head attention whose keys and values come from the map reduced sr_ratio times per side."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float,
                 sr_ratio: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        """x: (B, N, C) tokens of an H x W map (N = H * W, plus a class token in front in the last stage)."""
        B, N, C = x.shape
        hd = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, hd).transpose(1, 2)  # B, heads, N, hd
        if self.sr_ratio > 1:
            kv_in = x.transpose(1, 2).reshape(B, C, *size)
            kv_in = self.norm(self.sr(kv_in).flatten(2).transpose(1, 2))  # B, N / sr^2, C
        else:
            kv_in = x
        k, v = self.kv(kv_in).reshape(B, -1, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.dropout(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1),
                         p=self.attn_drop if self.training else 0.0)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """LN -> spatial-reduction attention -> residual -> LN -> MLP -> residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: float, sr_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PyramidVisionTransformer(nn.Module):
    """PVT v1 classifier; (B, in_chans, H, W) images -> (B, num_classes) logits."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        depths: Sequence[int] = (3, 4, 6, 3),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_classes, self.num_stages = num_classes, len(depths)
        self.num_features = embed_dims[-1]
        dpr = drop_path_rates(drop_path_rate, depths)
        side = img_size
        for i in range(self.num_stages):
            p = patch_size if i == 0 else 2
            embed = PatchEmbed(side, p, in_chans if i == 0 else embed_dims[i - 1], embed_dims[i])
            side //= p
            last = i == self.num_stages - 1
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, embed.num_patches + last, embed_dims[i])))
            setattr(self, f"pos_drop{i + 1}", nn.Dropout(drop_rate))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], num_heads[i], mlp_ratios[i], qkv_bias, drop_rate, attn_drop_rate, rate,
                      sr_ratios[i])
                for rate in dpr[i]
            ))
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.num_features))
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for i in range(self.num_stages):
            trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights)

    def no_weight_decay(self) -> set:
        """Parameter names the optimizer must not decay (official API; as officially, the class token only)."""
        return {"cls_token"}

    @staticmethod
    def _pos_embed(table: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
        """The (1, H*W, C) position embedding of a map of `size`: the table, resized bilinearly for other sizes."""
        if tuple(size) == tuple(grid):
            return table
        resized = F.interpolate(table.reshape(1, *grid, -1).permute(0, 3, 1, 2), size=size, mode="bilinear")
        return resized.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Class-token feature after the final norm: (B, num_features)."""
        B = x.shape[0]
        for i in range(self.num_stages):
            embed: PatchEmbed = getattr(self, f"patch_embed{i + 1}")
            table = getattr(self, f"pos_embed{i + 1}")
            x, size = embed(x)
            if i == self.num_stages - 1:
                x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
                pos = torch.cat((table[:, :1], self._pos_embed(table[:, 1:], embed.grid, size)), dim=1)
            else:
                pos = self._pos_embed(table, embed.grid, size)
            x = getattr(self, f"pos_drop{i + 1}")(x + pos)
            for block in getattr(self, f"block{i + 1}"):
                x = block(x, size)
            if i < self.num_stages - 1:
                x = x.transpose(1, 2).reshape(B, -1, *size)  # back to (B, C, H, W) for the next patch embedding
        return self.norm(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@dataclass(frozen=True)
class PVTVariant:
    """Depths of one PVT v1 size (the other hyperparameters are shared) and its published parameter count."""

    depths: Tuple[int, ...]
    params: int  # with a 1000-class head

    def kwargs(self) -> Dict[str, Any]:
        return dict(depths=self.depths)


# Official sizes (PVT paper, Table 2); every size shares embed_dims (64, 128, 320, 512), heads (1, 2, 5, 8),
# MLP ratios (8, 8, 4, 4), spatial reduction (8, 4, 2, 1), patch 4 and qkv bias.
PVT_ZOO: Dict[str, PVTVariant] = {
    "pvt_tiny": PVTVariant((2, 2, 2, 2), 13_229_288),
    "pvt_small": PVTVariant((3, 4, 6, 3), 24_485_864),
    "pvt_medium": PVTVariant((3, 4, 18, 3), 44_208_104),
    "pvt_large": PVTVariant((3, 8, 27, 3), 61_369_320),
}


def create_pvt(name: str, **overrides: Any) -> PyramidVisionTransformer:
    """Build a PVT v1 size by its official name (pvt_tiny, pvt_small, pvt_medium, pvt_large)."""
    if name not in PVT_ZOO:
        raise KeyError(f"unknown PVT model {name!r}; PVT v1 sizes: {', '.join(PVT_ZOO)}")
    return PyramidVisionTransformer(**{**PVT_ZOO[name].kwargs(), **overrides})


def list_pvt() -> List[str]:
    return list(PVT_ZOO)
