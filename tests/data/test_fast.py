"""FastPipeline gives what decode + the official transform gives: bitwise, or (draft) with the same crop."""
import random

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from torchvision import transforms as T
from PIL import Image

from data.base import seeded_rngs
from data.fast import FastOptions, FastPipeline, draft_factor, resized_crop_uint8, to_normalized_tensor
from data.images import decode_rgb
from data.transforms import build_transform
from tests.helpers.data import make_cfg


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast")
    rng = np.random.default_rng(3)
    out = []
    for k, (w, h) in enumerate([(120, 90), (64, 200), (50, 50)]):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        p = d / f"{k}.jpg"
        coarse.save(p, quality=92)
        out.append(str(p))
    Image.fromarray(rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)).save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8)).save(d / "gray.jpg")
    big = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((800, 600), Image.BICUBIC)
    big.save(d / "big.jpg", quality=95)
    return out + [str(d / "rgba.png"), str(d / "gray.jpg")], str(d / "big.jpg")


def test_fused_tensor_conversion_is_bitwise():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8))
    t = build_transform(False, make_cfg(DATA__IMG_SIZE=5))
    norm = t.transforms[-1]
    ref = t.transforms[-1](t.transforms[-2](img))
    mean, std = torch.tensor(norm.mean)[:, None, None], torch.tensor(norm.std)[:, None, None]
    assert torch.equal(to_normalized_tensor(img, mean, std), ref)


@pytest.mark.parametrize("is_train", [True, False])
def test_same_bits_as_decode_then_transform(files, is_train):
    paths, _ = files
    t = build_transform(is_train, make_cfg(DATA__IMG_SIZE=40))
    fast = FastPipeline(t)
    for p in paths:
        for seed in range(6):
            with seeded_rngs(seed):
                ref, after_ref = t(decode_rgb(p, p)), random.random()
            with seeded_rngs(seed):
                got, after_got = fast(p, p), random.random()
            with seeded_rngs(seed):
                from_bytes = fast(open(p, "rb").read(), p)
            assert torch.equal(got, ref) and torch.equal(from_bytes, ref) and after_got == after_ref, (p, seed)


def test_draft_keeps_the_crop_and_the_rng_stream(files):
    _, big = files
    t = build_transform(True, make_cfg(DATA__IMG_SIZE=64, AUG__AUTO_AUGMENT="none", AUG__REPROB=0.0,
                                       AUG__COLOR_JITTER=0.0))
    exact, fast = FastPipeline(t), FastPipeline(t, FastOptions(draft=True))
    drafted = 0
    for seed in range(12):
        with seeded_rngs(seed):
            i, j, h, w = t.transforms[0].get_params(Image.open(big), t.transforms[0].scale, t.transforms[0].ratio)
        drafted += draft_factor(w, h, 64, 64) > 1
        with seeded_rngs(seed):
            a, ra = exact(big, big), random.random()
        with seeded_rngs(seed):
            b, rb = fast(big, big), random.random()
        assert ra == rb and a.shape == b.shape == (3, 64, 64)
        assert (a - b).abs().mean() < 0.05  # the same crop, decoded at a lower scale (normalized units)
    assert drafted >= 3
    assert [draft_factor(w, 300, 64, 64) for w in (100, 128, 256, 600)] == [1, 2, 4, 4]


@pytest.mark.parametrize("size, pad", [(40, 4), (28, 0), (28, 2)])
@pytest.mark.parametrize("is_train", [True, False])
def test_from_image_same_bits_as_transform(files, is_train, size, pad):
    """In-memory data sets (load() gives a PIL image) take the fused path too: the same bits and RNG draws."""
    paths, _ = files
    t = build_transform(is_train, make_cfg(DATA__IMG_SIZE=size, AUG__SMALL_CROP_PADDING=pad))
    fast = FastPipeline(t)
    for p in paths:
        img = decode_rgb(p, p)
        for seed in range(4):
            with seeded_rngs(seed):
                ref, after_ref = t(img), random.random()
            with seeded_rngs(seed):
                got, after_got = fast.from_image(img), random.random()
            assert torch.equal(got, ref) and after_got == after_ref, (p, seed)


def _test_image(content: str, rng) -> Image.Image:
    if content == "edges":  # binary noise: every pixel a sharp edge, bicubic overshoot clamped everywhere
        return Image.fromarray((rng.integers(0, 2, (220, 300, 3)) * 255).astype(np.uint8))
    coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize((300, 220), Image.BICUBIC)
    noisy = np.clip(np.asarray(coarse).astype(int) + rng.integers(-30, 31, (220, 300, 3)), 0, 255)
    return Image.fromarray(noisy.astype(np.uint8))


@pytest.mark.parametrize("content", ["smooth", "edges"])
@pytest.mark.parametrize("interp", [T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC])
def test_uint8_resize_matches_pil_up_to_rounding(interp, content):
    """torch's uint8 antialiased kernels use PIL's filters: downscaled and upscaled crops (any aspect) differ
    from PIL's crop + resize by rounding; bicubic on sharp edges also by the order of the two clamped passes."""
    rng = np.random.default_rng(5)
    img = _test_image(content, rng)
    means = []
    for _ in range(40):
        h, w = int(rng.integers(6, 221)), int(rng.integers(6, 301))
        i, j = int(rng.integers(0, 221 - h)), int(rng.integers(0, 301 - w))
        size = (int(rng.integers(20, 130)), int(rng.integers(20, 130)))
        ref = np.asarray(F.resized_crop(img, i, j, h, w, list(size), interp)).astype(int)
        got = np.asarray(resized_crop_uint8(img, i, j, h, w, size, interp)).astype(int)
        diff = np.abs(got - ref)
        assert got.shape == ref.shape == (size[0], size[1], 3)
        means.append(diff.mean())
        if interp == T.InterpolationMode.BILINEAR or content == "smooth":
            bound = 2 if interp == T.InterpolationMode.BILINEAR else 5  # 5: strong bicubic upscaling
            assert diff.max() <= bound and diff.mean() < 0.35, (h, w, size, diff.max(), diff.mean())
        else:
            assert diff.mean() < 6, (h, w, size, diff.mean())  # a few pixels of each sharp edge
    assert np.mean(means) < (2.0 if content == "edges" and interp == T.InterpolationMode.BICUBIC else 0.1)


def test_uint8_resize_keeps_the_crop_and_the_rng_stream(files):
    """FastOptions(resize=True) makes the same draws and crops; 'random' interpolation and RandAugment too."""
    paths, _ = files
    t = build_transform(True, make_cfg(DATA__IMG_SIZE=40, DATA__INTERPOLATION="random"))
    exact, fast = FastPipeline(t), FastPipeline(t, FastOptions(resize=True))
    for p in paths:
        for seed in range(6):
            with seeded_rngs(seed):
                a, ra = exact(p, p), random.random()
            with seeded_rngs(seed):
                b, rb = fast(p, p), random.random()
            assert ra == rb and a.shape == b.shape == (3, 40, 40), (p, seed)
            # a few levels of 255 on a few pixels (normalized units: / 255 / std ~ 0.017 per level);
            # RandAugment can amplify a level (contrast, equalize), never move the image
            assert (a - b).abs().mean() < 0.05, (p, seed)
    t = build_transform(True, make_cfg(DATA__IMG_SIZE=40, DATA__INTERPOLATION="nearest"))
    with seeded_rngs(0):
        a = FastPipeline(t)(paths[0], "x")
    with seeded_rngs(0):
        b = FastPipeline(t, FastOptions(resize=True))(paths[0], "x")
    assert torch.equal(a, b)  # no uint8 kernel for nearest: PIL's, bitwise


def test_uint8_mode_and_device_normalize(files):
    """uint8 mode returns PIL's H x W x 3 pixels and DeviceNormalize finishes the job with the same bits;
    a transform it cannot split (no ToTensor + Normalize pair) keeps the full CPU pipeline."""
    paths, _ = files
    t = build_transform(False, make_cfg(DATA__IMG_SIZE=40))
    fast = FastPipeline(t, FastOptions(uint8=True))
    batch = torch.stack([fast(p, p) for p in paths])
    assert batch.dtype == torch.uint8 and batch.shape == (len(paths), 40, 40, 3)
    ref = torch.stack([t(decode_rgb(p, p)) for p in paths])
    assert torch.equal(fast.device_part()(batch), ref)
    assert FastPipeline(t).device_part() is None  # uint8 off: the output is final
    plain = T.Compose([T.Resize(40), T.CenterCrop(40), T.ToTensor()])
    kept = FastPipeline(plain, FastOptions(uint8=True))
    assert kept.device_part() is None and kept(paths[0], "x").dtype == torch.float32
    with pytest.raises(ValueError, match="uint8 N x H x W x 3"):
        fast.device_part()(ref)
