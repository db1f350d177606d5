"""Every supported layout, and one clear error for each bad one."""
import gzip
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from data import DataError, build_dataset, build_loaders
from data.fashion_mnist import FashionMNIST
from data.folder import FolderDataset
from data.imagenet22k import IN22K_CLASSES, IN22KDataset
from data.zipped import ZipMapDataset
from tests.helpers.data import load_script, make_cfg, write_folder

@pytest.fixture(scope="module")
def zipped(tmp_path_factory):
    root = tmp_path_factory.mktemp("in")
    src = write_folder(root / "folder", classes=("n03", "n01", "n02"), per_class=(4, 3))
    assert load_script("make_zip").main([src, str(root / "zip")]) == 0
    return src, str(root / "zip")


def test_make_zip_map_format(zipped):
    _, z = zipped
    lines = open(os.path.join(z, "train_map.txt")).read().splitlines()
    assert len(lines) == 12 and lines[0] == "n01/n01_0.JPEG\t0" and lines[-1] == "n03/n03_3.JPEG\t2"


@pytest.mark.parametrize("cache", ["no", "part", "full"])
def test_zip_matches_folder_bitwise(zipped, cache):
    src, z = zipped
    folder = FolderDataset(src, "val")
    for rank in range(2):
        ds = ZipMapDataset(z, "val", cache_mode=cache, rank=rank, world_size=2)
        assert len(ds) == 9 and ds.num_classes == 3 and ds.targets == folder.targets
        cached = [i for i in range(9) if ds.cached(i)]
        assert cached == {"no": [], "part": list(range(rank, 9, 2)), "full": list(range(9))}[cache]
        for i in range(9):
            assert np.array_equal(np.asarray(ds[i][0]), np.asarray(folder[i][0]))
    assert ds._cache.nbytes == (0 if cache == "no" else sum(
        os.path.getsize(folder.path(i)) for i in cached))


def test_zip_handle_is_lazy_and_per_process(zipped):
    _, z = zipped
    cfg = make_cfg(DATA__DATA_PATH=z, DATA__ZIP_MODE=True, DATA__CACHE_MODE="no", DATA__NUM_WORKERS=2)
    L = build_loaders(cfg, 0, 1, torch.device("cpu"))
    main_side = torch.stack([L.val_set[i][0] for i in range(9)])
    assert L.val_set._fh is not None  # opened here; forked workers must open their own, not share its offset
    assert torch.equal(torch.cat([x for x, _ in L.val_loader]), main_side)


def test_zip_map_accepts_official_prefix_and_reports_missing(zipped, tmp_path):
    _, z = zipped
    for f in ("train.zip", "val.zip", "val_map.txt"):
        shutil.copy(os.path.join(z, f), tmp_path / f)
    lines = open(os.path.join(z, "train_map.txt")).read().splitlines()
    (tmp_path / "train_map.txt").write_text("\n".join("train.zip@/" + ln for ln in lines) + "\n")
    assert len(ZipMapDataset(str(tmp_path), "train")) == 12
    (tmp_path / "train_map.txt").write_text("n09/missing.JPEG\t0\n")
    with pytest.raises(DataError, match="not in .*train.zip.*missing.JPEG"):
        ZipMapDataset(str(tmp_path), "train")


def _write_22k(root, as_json=True):
    items = []
    for wnid, label in (("n00004475", 0), ("n15102894", IN22K_CLASSES - 1)):
        d = root / "fall11_whole" / wnid
        d.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((20, 30, 3), i * 50, np.uint8)).save(d / f"{wnid}_{i}.JPEG")
            items.append([f"fall11_whole/{wnid}/{wnid}_{i}.JPEG", label])
    for split in ("train", "val"):
        path = root / f"ILSVRC2011fall_whole_map_{split}.txt"
        if as_json:
            path.write_text(json.dumps(items))
        else:
            path.write_text("".join(f"{p}\t{lab}\n" for p, lab in items))
    return items


@pytest.mark.parametrize("as_json", [True, False])
def test_imagenet22k_maps(tmp_path, as_json):
    items = _write_22k(tmp_path, as_json)
    cfg = make_cfg(DATA__DATASET="imagenet22K", DATA__DATA_PATH=str(tmp_path), MODEL__NUM_CLASSES=IN22K_CLASSES,
                   DATA__BATCH_SIZE=2)
    ds, n = build_dataset(True, cfg)
    assert isinstance(ds, IN22KDataset) and n == 21841 and ds.targets == [it[1] for it in items]
    assert ds[3][0].shape == (32, 32, 3) and ds[3][0].dtype == torch.uint8  # normalized on the device


def _write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    (gzip.open if gz else open)(str(path) + (".gz" if gz else ""), "wb").write(header + arr.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) for s, n in (("train", 6), ("t10k", 4))}
    for s, im in imgs.items():
        _write_idx(tmp_path / f"{s}-images-idx3-ubyte", im, gz)
        _write_idx(tmp_path / f"{s}-labels-idx1-ubyte", np.arange(len(im), dtype=np.uint8), gz)
    cfg = make_cfg(DATA__DATASET="fashion_mnist", DATA__DATA_PATH=str(tmp_path), MODEL__NUM_CLASSES=10,
                   DATA__IMG_SIZE=28, DATA__BATCH_SIZE=2)
    L = build_loaders(cfg, 0, 1, torch.device("cpu"))
    assert len(L.train_set) == 6 and len(L.val_set) == 4 and L.num_classes == 10
    assert np.array_equal(np.asarray(L.val_set.load(2))[..., 1], imgs["t10k"][2])
    x, y = next(iter(L.val_loader))
    assert x.shape == (2, 28, 28, 3) and x.dtype == torch.uint8 and y.tolist() == [0, 1]
    assert L.val_prepare(x).shape == (2, 3, 28, 28)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(3, dtype=np.uint8), gz)
    with pytest.raises(DataError, match="disagree"):
        FashionMNIST(str(tmp_path), False)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="real files not installed")
def test_fashion_mnist_real_files():
    tr, te = FashionMNIST("", True), FashionMNIST("", False)
    assert (len(tr), len(te)) == (60000, 10000) and tr.images.shape == (60000, 28, 28)
    assert np.bincount(tr._labels).tolist() == [6000] * 10 and np.bincount(te._labels).tolist() == [1000] * 10


def _err(tmp_path, **over):
    with pytest.raises(DataError) as e:
        build_loaders(make_cfg(**over), 0, 1, torch.device("cpu"))
    return str(e.value)


def test_bad_layouts_give_one_clear_error(tmp_path):
    assert "DATA.DATA_PATH is empty" in _err(tmp_path, DATA__DATA_PATH="")
    assert "does not exist" in _err(tmp_path, DATA__DATA_PATH=str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    assert "is a file" in _err(tmp_path, DATA__DATA_PATH=str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    msg = _err(tmp_path, DATA__DATA_PATH=str(tmp_path / "empty"))
    assert "train is missing" in msg and "train/<class>/<image>" in msg
    root = write_folder(tmp_path / "a", classes=("c1", "c2", "c3"), per_class=(2, 1))
    os.makedirs(os.path.join(root, "val", "c9"))
    assert "c9" in _err(tmp_path, DATA__DATA_PATH=root) and "do not exist in" in _err(tmp_path, DATA__DATA_PATH=root)
    root = write_folder(tmp_path / "b", classes=("c1",), per_class=(2, 1))
    for f in os.listdir(os.path.join(root, "train", "c1")):
        os.remove(os.path.join(root, "train", "c1", f))
    assert "No images" in _err(tmp_path, DATA__DATA_PATH=root, MODEL__NUM_CLASSES=1)
    assert "train.zip is missing" in _err(tmp_path, DATA__DATA_PATH=str(tmp_path / "empty"), DATA__ZIP_MODE=True)
    assert "ILSVRC2011fall_whole_map_train.txt is missing" in _err(
        tmp_path, DATA__DATA_PATH=str(tmp_path / "empty"), DATA__DATASET="imagenet22K")
    assert "images-idx3-ubyte" in _err(tmp_path, DATA__DATA_PATH=str(tmp_path / "empty"),
                                      DATA__DATASET="fashion_mnist", MODEL__NUM_CLASSES=10)


def test_check_data_script(tmp_path, capsys):
    check = load_script("check_data")
    root = write_folder(tmp_path / "ok", classes=("a", "b"), per_class=(3, 1))
    assert check.main([root, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 images, 2 classes with images, 0 unreadable" in out and "  a\t3" in out
    bad = os.path.join(root, "val", "b", "b_0.JPEG")
    open(bad, "wb").write(b"not a jpeg")
    assert check.main([root, "--workers", "0", "--json", str(tmp_path / "r.json")]) == 1
    assert bad in capsys.readouterr().out
    assert json.load(open(tmp_path / "r.json"))["val"]["unreadable"][0].startswith(f"Cannot decode image {bad}")
    assert check.main([os.path.join(root, "train"), "--workers", "0"]) == 0  # a single split folder
    assert check.main([str(tmp_path / "missing"), "--workers", "0"]) == 2


def test_benchmark_script_runs_and_writes_json(tmp_path):
    bench = load_script("benchmark_data")
    out = tmp_path / "b.json"
    assert bench.main(["--dir", str(tmp_path / "imgs"), "--num-images", "4", "--repeats", "1", "--out", str(out)]) == 0
    res = json.load(open(out))
    assert res["images"] == 4 and res["speedup"] > 0 and res["ours"]["cpu_ms_per_image"] > 0
    readers = res["read_cpu_ms_per_image"]
    assert set(readers) == {"folder", "zip", "zip_cached", "parquet", "parquet_cached"}
    assert all(set(r) == {"random", "consecutive"} for r in readers.values())
    assert Image.open(tmp_path / "imgs" / "train" / "c0" / "0.JPEG").size == (500, 375)
