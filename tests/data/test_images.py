"""Odd image files: every mode becomes 3-channel RGB with correct values; corrupt files in both policies."""
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from data import CorruptImageError, build_loaders, corrupt_count
from data.folder import FolderDataset
from data.images import decode_rgb
from data.transforms import build_transform
from tests.helpers.data import make_cfg, write_folder


def _odd_images(d):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    files = {}
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    rgba = np.dstack([rgb, rng.integers(0, 256, (30, 40), dtype=np.uint8)])
    Image.fromarray(rgba).save(d / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(d / "gray.png")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(d / "gray16.png")  # I;16 / I on load
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    Image.fromarray(rgb[:1, :1]).save(d / "one.png")
    Image.fromarray(rng.integers(0, 256, (9, 400, 3), dtype=np.uint8)).save(d / "wide.jpg")
    Image.fromarray(rng.integers(0, 256, (400, 9, 3), dtype=np.uint8)).save(d / "tall.bmp")
    Image.fromarray(rgb[..., 0] > 128).save(d / "bilevel.png")
    for f in sorted(os.listdir(d)):
        files[f] = str(d / f)
    return files, rgb


def test_odd_modes_become_rgb_tensors(tmp_path):
    files, rgb = _odd_images(tmp_path)
    cfg = make_cfg(DATA__IMG_SIZE=48)
    train_t, eval_t = build_transform(True, cfg), build_transform(False, cfg)
    for name, path in files.items():
        img = decode_rgb(path, path)
        assert img.mode == "RGB", name
        for t in (train_t, eval_t):
            x = t(img)
            assert x.shape == (3, 48, 48) and x.dtype == torch.float32 and torch.isfinite(x).all(), name
    # 16-bit: 257 * k must come back as exactly k, not clipped to 255
    g16 = np.asarray(decode_rgb(files["gray16.png"], "g16"))
    assert np.array_equal(g16[..., 0], rgb[..., 0]) and np.array_equal(g16[..., 2], rgb[..., 0])
    assert np.array_equal(np.asarray(decode_rgb(files["gray.png"], "g"))[..., 1], rgb[..., 0])
    assert np.array_equal(np.asarray(decode_rgb(files["rgba.png"], "a")), rgb)  # alpha dropped, colour kept
    assert decode_rgb(files["wide.jpg"], "w").size == (400, 9)


def test_32bit_int_and_float_modes():
    i32 = Image.fromarray(np.array([[0, 257, 65535, 70000]], dtype=np.int32))
    assert np.asarray(decode_rgb_from(i32))[0, :, 0].tolist() == [0, 1, 255, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(decode_rgb_from(f))[0, :, 0].tolist() == [0, 128, 255]


def decode_rgb_from(img):
    from data.images import to_rgb

    return to_rgb(img)


def _corrupt_folder(root):
    write_folder(root, classes=("a", "b"), per_class=(4, 2))
    bad = os.path.join(root, "train", "a", "a_1.JPEG")
    with open(bad, "r+b") as f:  # keep the header, cut the data: a truncated JPEG
        f.truncate(200)
    return bad


def test_corrupt_error_names_file(tmp_path):
    bad = _corrupt_folder(tmp_path)
    ds = FolderDataset(str(tmp_path), "train", build_transform(False, make_cfg()))
    with pytest.raises(CorruptImageError, match=os.path.basename(bad)):
        ds[1]
    assert ds[0][1] == 0


def test_corrupt_skip_replaces_and_counts_across_workers(tmp_path, caplog):
    bad = _corrupt_folder(tmp_path)
    cfg = make_cfg(DATA__DATA_PATH=str(tmp_path), DATA__ON_CORRUPT="skip", MODEL__NUM_CLASSES=2, DATA__BATCH_SIZE=2,
                   DATA__NUM_WORKERS=2, DATA__PERSISTENT_WORKERS=False)
    L = build_loaders(cfg, 0, 1, torch.device("cpu"))
    ds = L.train_set
    assert ds._sample_or_skip(1)[1] == 2  # deterministic replacement: the next index
    ds.reset_corrupt_count()
    L.train_sampler.set_epoch(0)
    with caplog.at_level(logging.WARNING):
        n = sum(len(y) for _, y in L.train_loader)
    assert n == 8 and corrupt_count(ds) == 1  # counted in a worker process, read in the main process
    L.train_sampler.set_epoch(1)
    for _ in L.train_loader:
        pass
    assert corrupt_count(ds) == 2
    ds[1]
    assert corrupt_count(ds) == 3 and any(bad in r.getMessage() for r in caplog.records)
