"""Pure window operations of the Swin Transformer: partition, reverse, relative positions, shift masks.

Token maps are channels-last (B, H, W, C) throughout, as in timm and torchvision, so a block never has to
transpose between the sequence and the image layout.
"""
from typing import Tuple

import torch


def window_partition(x: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """Split a token map into non-overlapping windows.

    x: (B, H, W, C) with H, W multiples of the window. Returns (B * nW, wh * ww, C), windows in row-major
    order of the window grid (nW = H/wh * W/ww), tokens row-major inside each window.
    """
    B, H, W, C = x.shape
    wh, ww = window
    x = x.view(B, H // wh, wh, W // ww, ww, C)  # B, nH, wh, nW, ww, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B * (H // wh) * (W // ww), wh * ww, C)  # B*nW, wh*ww, C


def window_reverse(windows: torch.Tensor, window: Tuple[int, int], H: int, W: int) -> torch.Tensor:
    """Inverse of window_partition.

    windows: (B * nW, wh * ww, C). Returns (B, H, W, C).
    """
    wh, ww = window
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C)  # B, nH, nW, wh, ww, C
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)  # B, H, W, C


def relative_position_index(window: Tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """Row of the relative position bias table for every pair of tokens in a window.

    Returns a long tensor (N, N), N = wh * ww, entry [i, j] = (dy + wh - 1) * (2 ww - 1) + (dx + ww - 1)
    with (dy, dx) = position(i) - position(j), as in the official release.
    """
    wh, ww = window
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    coords = torch.stack((ys.flatten(), xs.flatten()))  # 2, N
    rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)  # N, N


def shifted_window_mask(
    size: Tuple[int, int], window: Tuple[int, int], shift: Tuple[int, int], device: torch.device | None = None
) -> torch.Tensor:
    """Additive attention mask for windows of a map cyclically shifted by -shift.

    size: (H, W) of the (padded) map, multiples of the window. Tokens that come from different regions of
    the unshifted map get -100.0 (the official value), pairs from the same region 0.0.
    Returns a float32 tensor (nW, N, N), nW = H/wh * W/ww, N = wh * ww.
    """
    H, W = size

    def region(n: int, w: int, s: int) -> torch.Tensor:
        # three bands along one axis: [0, n-w), [n-w, n-s), [n-s, n); with s == 0 the last band is empty
        idx = torch.arange(n, device=device)
        return (idx >= n - w).long() + (idx >= n - s).long() * int(s > 0)

    label = region(H, window[0], shift[0])[:, None] * 3 + region(W, window[1], shift[1])[None, :]  # H, W
    windows = window_partition(label[None, :, :, None], window).squeeze(-1)  # nW, N
    diff = windows[:, None, :] != windows[:, :, None]  # nW, N, N
    return torch.zeros(diff.shape, device=device).masked_fill_(diff, -100.0)
