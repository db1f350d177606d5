"""Pure window operations of the Swin Transformer: partition, reverse, relative positions, shift masks.

Token maps are channels-last (B, H, W, C) throughout, as in timm and torchvision, so a block never has to
transpose between the sequence and the image layout.
"""
from typing import List, Tuple

import torch


def _pieces(n: int, w: int, s: int) -> List[Tuple[slice, slice, slice]]:
    """Along one axis of length n (a multiple of w) rolled by -s: (window slice, offset slice, source slice)
    triples whose union is the whole rolled axis; each source range is contiguous in the unrolled map."""
    nw = n // w
    if s == 0:
        return [(slice(0, nw), slice(0, w), slice(0, n))]
    return [
        (slice(0, nw - 1), slice(0, w), slice(s, s + (nw - 1) * w)),  # windows that do not wrap around
        (slice(nw - 1, nw), slice(0, w - s), slice(n - w + s, n)),  # head of the last window
        (slice(nw - 1, nw), slice(w - s, w), slice(0, s)),  # its tail: the first s rows wrapped around
    ]


def _shift_copy(grid: torch.Tensor, windows: torch.Tensor, window: Tuple[int, int], shift: Tuple[int, int],
                to_windows: bool) -> None:
    """Copy between a (B, H, W, C) map and its (B, nH, nW, wh, ww, C) shifted windows, one pass, <= 9 copies."""
    B, H, W, C = grid.shape
    wh, ww = window
    for hi, ha, rows in _pieces(H, wh, shift[0]):
        for wj, wc, cols in _pieces(W, ww, shift[1]):
            ni, na = hi.stop - hi.start, ha.stop - ha.start
            nj, nc = wj.stop - wj.start, wc.stop - wc.start
            g = grid[:, rows, cols].view(B, ni, na, nj, nc, C).permute(0, 1, 3, 2, 4, 5)  # B, ni, nj, na, nc, C
            w = windows[:, hi, wj, ha, wc]  # B, ni, nj, na, nc, C
            if to_windows:
                w.copy_(g)
            else:
                g.copy_(w)


def _partition(x: torch.Tensor, window: Tuple[int, int], shift: Tuple[int, int]) -> torch.Tensor:
    B, H, W, C = x.shape
    out = x.new_empty(B, H // window[0], W // window[1], window[0], window[1], C)  # B, nH, nW, wh, ww, C
    _shift_copy(x, out, window, shift, to_windows=True)
    return out.view(-1, window[0] * window[1], C)  # B*nW, wh*ww, C


def _reverse(windows: torch.Tensor, window: Tuple[int, int], H: int, W: int, shift: Tuple[int, int]) -> torch.Tensor:
    C = windows.shape[-1]
    out = windows.new_empty(windows.shape[0] * window[0] * window[1] // (H * W), H, W, C)  # B, H, W, C
    src = windows.reshape(-1, H // window[0], W // window[1], window[0], window[1], C)  # B, nH, nW, wh, ww, C
    _shift_copy(out, src, window, shift, to_windows=False)
    return out


class _Partition(torch.autograd.Function):
    # each direction's gradient is the other direction: one copy forward, one copy backward
    @staticmethod
    def forward(ctx, x, window, shift):
        ctx.meta = (window, x.shape[1], x.shape[2], shift)
        return _partition(x, window, shift)

    @staticmethod
    def backward(ctx, grad):
        window, H, W, shift = ctx.meta
        return _reverse(grad, window, H, W, shift), None, None


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, windows, window, H, W, shift):
        ctx.meta = (window, shift)
        return _reverse(windows, window, H, W, shift)

    @staticmethod
    def backward(ctx, grad):
        window, shift = ctx.meta
        return _partition(grad.contiguous(), window, shift), None, None, None, None


def window_partition(x: torch.Tensor, window: Tuple[int, int], shift: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Cyclically shift a token map by -shift (torch.roll) and split it into non-overlapping windows.

    x: (B, H, W, C) with H, W multiples of the window, 0 <= shift < window. Returns (B * nW, wh * ww, C),
    windows in row-major order of the window grid (nW = H/wh * W/ww), tokens row-major inside each window.
    Shift and partition happen in one copy (torch.roll alone costs several), in both directions of autograd.
    """
    return _Partition.apply(x, tuple(window), tuple(shift))


def window_reverse(windows: torch.Tensor, window: Tuple[int, int], H: int, W: int,
                   shift: Tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Inverse of window_partition: windows (B * nW, wh * ww, C) -> (B, H, W, C) map rolled back by +shift."""
    return _Reverse.apply(windows, tuple(window), H, W, tuple(shift))


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
    windows = _partition(label[None, :, :, None], window, (0, 0)).squeeze(-1)  # nW, N
    diff = windows[:, None, :] != windows[:, :, None]  # nW, N, N
    return torch.zeros(diff.shape, device=device).masked_fill_(diff, -100.0)
