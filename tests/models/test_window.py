import torch

from models.window import relative_position_index, shifted_window_mask, window_partition, window_reverse


def test_partition_reverse_round_trip_and_window_contents():
    x = torch.randn(2, 14, 21, 5)
    w = window_partition(x, (7, 7))
    assert w.shape == (2 * 2 * 3, 49, 5)
    # window 4 of image 1 is row 1, column 1 of its 2x3 window grid
    assert torch.equal(w[6 + 4].view(7, 7, 5), x[1, 7:14, 7:14])
    assert torch.equal(window_reverse(w, (7, 7), 14, 21), x)


def test_shifted_partition_equals_roll_then_partition_with_gradients():
    for H, W, win, shift in ((14, 21, (7, 7), (3, 3)), (14, 21, (7, 7), (0, 3)), (24, 12, (12, 12), (6, 6))):
        x = torch.randn(2, H, W, 3, requires_grad=True)
        ref = torch.roll(x, (-shift[0], -shift[1]), (1, 2))
        ref = ref.view(2, H // win[0], win[0], W // win[1], win[1], 3).permute(0, 1, 3, 2, 4, 5)
        ref = ref.reshape(-1, win[0] * win[1], 3)
        out = window_partition(x, win, shift)
        assert torch.equal(out, ref)
        g = torch.randn_like(out)
        assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])
        back = window_reverse(out, win, H, W, shift)
        assert torch.equal(back, x)
        assert torch.equal(torch.autograd.grad(back, out, x)[0], window_partition(x, win, shift))


def test_relative_position_index_matches_the_official_formula():
    wh = ww = 3
    idx = relative_position_index((wh, ww))
    pos = [(y, x) for y in range(wh) for x in range(ww)]
    for i, (yi, xi) in enumerate(pos):
        for j, (yj, xj) in enumerate(pos):
            assert idx[i, j] == (yi - yj + wh - 1) * (2 * ww - 1) + (xi - xj + ww - 1)
    assert idx.max() == (2 * wh - 1) * (2 * ww - 1) - 1


def _official_mask(H, W, win, s):
    # the official slice construction, written out independently
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for h in (slice(0, -win), slice(-win, -s), slice(-s, None)):
        for w in (slice(0, -win), slice(-win, -s), slice(-s, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    mw = img.view(1, H // win, win, W // win, win).permute(0, 1, 3, 2, 4).reshape(-1, win * win)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


def test_shift_mask_equals_the_official_construction():
    m = shifted_window_mask((14, 21), (7, 7), (3, 3))
    assert m.shape == (6, 49, 49) and m.dtype == torch.float32
    assert torch.equal(m, _official_mask(14, 21, 7, 3))
    assert set(m.unique().tolist()) == {0.0, -100.0}
    assert not m[0].any()  # the top-left window holds one region only
    # last window: 4 regions; token (0,0) and token (6,6) come from different corners of the image
    assert m[-1, 0, 48] == -100.0 and m[-1, 0, 1] == 0.0


def test_shift_mask_with_one_axis_unshifted_only_splits_the_other():
    m = shifted_window_mask((7, 14), (7, 7), (0, 3))
    assert m.shape == (2, 49, 49)
    assert not m[0].any()
    col = torch.arange(49) % 7
    same = (col[:, None] >= 4) == (col[None, :] >= 4)
    assert torch.equal(m[1] == 0, same)
