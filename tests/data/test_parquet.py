"""Parquet shards in the Hub's layout: the same image gets the same label as from the folder layout, every row is
readable by index (cache modes included), and bad shards give one clear error naming the file."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data import DataError, build_dataset, build_loaders
from data.errors import CorruptImageError
from data.folder import FolderDataset
from data.parquet import ParquetDataset, find_shards, write_shards
from tests.helpers.data import load_script, make_cfg, write_folder

CLASSES = ("n03", "n01", "n02")


def _rows(folder: FolderDataset, order: np.ndarray) -> list[tuple[bytes, int]]:
    return [(open(folder.path(i), "rb").read(), folder.target(i)) for i in order]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A folder layout and the same images as parquet shards, rows shuffled (as the Hub's copy is), row groups of
    2 over 3 training shards and 2 validation shards."""
    root = tmp_path_factory.mktemp("pq")
    src = write_folder(root / "folder", classes=CLASSES, per_class=(4, 3))
    out = str(root / "parquet")
    rng = np.random.default_rng(1)
    for split, hub, shards in (("train", "train", 3), ("val", "validation", 2)):
        folder = FolderDataset(src, split)
        write_shards(_rows(folder, rng.permutation(len(folder))), out, hub, num_shards=shards, rows_per_group=2,
                     class_names=sorted(CLASSES))
    return src, out


def _by_bytes(ds) -> dict[bytes, int]:
    return {ds.source(i) if hasattr(ds, "shards") else open(ds.path(i), "rb").read(): ds.target(i)
            for i in range(len(ds))}


@pytest.mark.parametrize("split", ["train", "val"])
def test_each_image_has_its_folder_label(sources, split):
    src, out = sources
    ds, folder = ParquetDataset(out, split), FolderDataset(src, split)
    assert len(ds) == len(folder) == {"train": 12, "val": 9}[split]
    assert ds.num_classes == 3 and ds.classes == ["n01", "n02", "n03"]
    assert len(ds.shards) == {"train": 3, "val": 2}[split]
    assert _by_bytes(ds) == _by_bytes(folder)  # the same image, the same label; every row read back whole


@pytest.mark.parametrize("cache", ["no", "part", "full"])
def test_cache_modes_hold_the_rank_shard_and_serve_the_same_bytes(sources, cache):
    _, out = sources
    plain = ParquetDataset(out, "val", cache_mode="no")
    for rank in range(2):
        ds = ParquetDataset(out, "val", cache_mode=cache, rank=rank, world_size=2)
        assert [i for i in range(9) if ds.cached(i)] == {"no": [], "part": list(range(rank, 9, 2)),
                                                          "full": list(range(9))}[cache]
        assert [ds.source(i) for i in range(9)] == [plain.source(i) for i in range(9)]
        assert ds.targets == plain.targets


def test_rows_read_in_any_order_and_in_forked_workers(sources):
    _, out = sources
    ds = ParquetDataset(out, "train", cache_mode="no")
    expected = [ds.source(i) for i in range(len(ds))]
    order = np.random.default_rng(0).permutation(len(ds))
    assert [ds.source(int(i)) for i in order] == [expected[i] for i in order]
    cfg = make_cfg(DATA__DATASET="imagenet", DATA__DATA_PATH=out, DATA__CACHE_MODE="no", DATA__NUM_WORKERS=2,
                   AUG__MIXUP=0.0, AUG__CUTMIX=0.0)
    loaders = build_loaders(cfg, rank=0, world_size=1, device=torch.device("cpu"))
    assert isinstance(loaders.val_set, ParquetDataset) and isinstance(loaders.train_set, ParquetDataset)
    seen = torch.cat([y for _, y in loaders.val_loader])
    assert seen.tolist() == loaders.val_set.targets  # every validation row once, in order, with its label
    images, _ = next(iter(loaders.train_loader))
    assert images.shape[0] == 4


def test_layout_patterns_and_binary_column(tmp_path, sources):
    _, out = sources
    pf = pq.ParquetFile(find_shards(out, "val")[0])
    table = pf.read()
    plain = pa.table({"image": table.column("image").combine_chunks().field("bytes"), "label": table.column("label")})
    os.makedirs(tmp_path / "validation")
    pq.write_table(plain, tmp_path / "validation" / "0000.parquet")
    assert find_shards(str(tmp_path), "val") == [str(tmp_path / "validation" / "0000.parquet")]
    ds = ParquetDataset(str(tmp_path), "val")
    assert [ds.source(i) for i in range(len(ds))] == [bytes(b.as_py()) for b in plain.column("image")]
    assert ds.classes is None and ds.num_classes == max(plain.column("label").to_pylist()) + 1
    assert find_shards(str(tmp_path), "train") == []


def test_a_corrupt_image_is_named_and_skipped_on_request(tmp_path, capsys):
    good = write_folder(tmp_path / "f", classes=("a", "b"), per_class=(1, 2))
    folder = FolderDataset(good, "val")
    rows = _rows(folder, np.arange(4))
    rows[1] = (b"not an image", rows[1][1])
    write_shards(rows, str(tmp_path / "p"), "validation", rows_per_group=2)
    cfg = dict(DATA__DATASET="imagenet", DATA__DATA_PATH=str(tmp_path / "p"), MODEL__NUM_CLASSES=2,
               DATA__CACHE_MODE="no")
    ds, _ = build_dataset(False, make_cfg(**cfg))
    with pytest.raises(CorruptImageError, match=r"validation-00000-of-00001\.parquet \(row group 0, row 1\).*"
                                                 r"DATA.ON_CORRUPT skip"):
        ds[1]
    ds, _ = build_dataset(False, make_cfg(DATA__ON_CORRUPT="skip", **cfg))
    assert ds[1][1] == ds.target(2) and ds.corrupt_count() == 1
    check = load_script("check_data")  # lists it too
    assert check.main([str(tmp_path / "p"), "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "val: 4 images, 2 classes with images, 1 unreadable" in out
    assert "UNREADABLE Cannot decode image " + ds.name(1) in out


def _write(path, **columns) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("case, message", [
    ("no_label", r"has columns \['image'\]; expected .*label"),
    ("text_label", r"column label has type string; expected integer"),
    ("negative", r"row group 0, row 1\) has label -1, outside 0\.\.1 .*test\) cannot be trained"),
    ("truncated", r"is not a readable parquet file .*download it again"),
    ("image_type", r"column image has type int64"),
])
def test_bad_shards_give_one_clear_error(tmp_path, case, message):
    shard = str(tmp_path / "data" / "validation-00000-of-00001.parquet")
    img = pa.array([b"x", b"y"], pa.binary())
    if case == "no_label":
        _write(shard, image=img)
    elif case == "text_label":
        _write(shard, image=img, label=pa.array(["a", "b"]))
    elif case == "negative":
        _write(shard, image=img, label=pa.array([1, -1]))
    elif case == "image_type":
        _write(shard, image=pa.array([1, 2]), label=pa.array([0, 1]))
    else:
        _write(shard, image=img, label=pa.array([0, 1]))
        data = open(shard, "rb").read()
        open(shard, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match=message):
        ParquetDataset(str(tmp_path), "val")


def test_a_cache_larger_than_memory_is_refused_before_reading(sources, monkeypatch):
    _, out = sources
    monkeypatch.setattr("data.bytecache.available_memory", lambda: 1000)
    with pytest.raises(DataError, match=r"DATA.CACHE_MODE would hold .* set DATA.CACHE_MODE no"):
        ParquetDataset(out, "val", cache_mode="full")


def test_two_processes_train_on_the_shards_and_evaluate_like_the_folder_layout(sources, tmp_path):
    """One epoch on 2 processes straight from the shards; the checkpoint then evaluated on the folder layout (one
    process) counts the same correct images: every validation row was seen once, with its folder label."""
    import json

    import engine
    from configs import get_config
    from tests.helpers.processes import RUN_OPTS, main_cmd, run, run_dir

    src, out = sources
    data = ["DATA.DATASET", "imagenet", "MODEL.NUM_CLASSES", "3", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
            "AUG.REPEATED_AUG", "True", "DATA.CACHE_MODE", "part"]
    done = run(main_cmd(str(tmp_path / "pq"), *data, "DATA.DATA_PATH", out, procs=2))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    directory = run_dir(str(tmp_path / "pq"))
    two = json.load(open(os.path.join(directory, "eval.json")))
    assert two["num_images"] == 9
    ckpt = os.path.join(directory, "ckpt_epoch_0.pth")
    assert engine.run(get_config(None, RUN_OPTS + data + ["DATA.DATA_PATH", src, "EVAL_MODE", "True",
                                                          "MODEL.RESUME", ckpt, "OUTPUT", str(tmp_path / "f")])) == 0
    one = json.load(open(os.path.join(run_dir(str(tmp_path / "f")), "eval", "eval.json")))
    assert (one["num_images"], one["correct1"], one["correct5"]) == (9, two["correct1"], two["correct5"])
    assert abs(one["loss"] - two["loss"]) <= 1e-5 * abs(one["loss"])


def test_a_damaged_row_group_is_skipped_whole_and_read_once(tmp_path, monkeypatch):
    good = write_folder(tmp_path / "f", classes=("a", "b"), per_class=(1, 3))
    folder = FolderDataset(good, "val")
    (shard,) = write_shards(_rows(folder, np.arange(6)), str(tmp_path / "p"), "validation", rows_per_group=2)
    column = pq.ParquetFile(shard).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset if column.has_dictionary_page else column.data_page_offset
    with open(shard, "r+b") as f:  # garble the page header of row group 1's images (rows 2 and 3)
        f.seek(start)
        f.write(b"\xff" * 16)
    ds = ParquetDataset(str(tmp_path / "p"), "val", on_corrupt="skip")
    reads = []
    real = ds._file
    monkeypatch.setattr(ds, "_file", lambda s: reads.append(s) or real(s))
    assert ds[2][1] == ds.target(4) and ds.corrupt_count() == 2  # rows 2 and 3 skipped, row 4 served
    assert len(reads) == 2  # group 1 once (it failed), then group 2
    with pytest.raises(CorruptImageError, match=r"Cannot read row group 1 of .*validation-00000-of-00001\.parquet"):
        ParquetDataset(str(tmp_path / "p"), "val")[3]


def test_open_shards_are_bounded(sources, monkeypatch):
    _, out = sources
    monkeypatch.setattr("data.parquet._OPEN_FILES", 2)
    ds = ParquetDataset(out, "train", cache_mode="no")
    expected = _by_bytes(ds)  # reads every shard in turn
    assert len(ds._files) == 2 and len(ds.shards) == 3
    assert _by_bytes(ParquetDataset(out, "train", cache_mode="full")) == expected


def test_part_cache_deals_whole_row_groups_and_the_sampler_draws_from_them(sources, monkeypatch):
    """Training with CACHE_MODE part on 2 ranks: 3 shards x 2 row groups of 2 rows; rank r holds the rows of the row
    groups 0, 2, 4 (r = 0) or 1, 3, 5 (r = 1), reads only those groups to fill its cache, and its epochs draw from
    exactly them."""
    from data.build import _train_sampler

    _, out = sources
    groups_read = []
    real = ParquetDataset._row_group
    monkeypatch.setattr(ParquetDataset, "_row_group", lambda self, s, g: groups_read.append((s, g)) or real(self, s, g))
    held = []
    for rank in range(2):
        groups_read.clear()
        ds = ParquetDataset(out, "train", cache_mode="part", rank=rank, world_size=2)
        mine = [i for i in range(len(ds)) if ds.cached(i)]
        assert mine == [i for i in range(len(ds)) if (i // 2) % 2 == rank]  # row groups dealt in turn
        assert sorted(set(groups_read)) == [(s, g) for s in range(3) for g in range(2) if (2 * s + g) % 2 == rank]
        sampler = _train_sampler(make_cfg(DATA__DATASET="imagenet"), ds, rank, 2)
        for epoch in range(2):
            sampler.set_epoch(epoch)
            drawn = [i for i, _ in sampler]
            assert sorted(drawn) == mine and len(drawn) == sampler.num_samples == 6
        held += mine
    assert sorted(held) == list(range(12))  # every row on exactly one rank


def test_part_cache_with_more_ranks_than_row_groups_is_one_clear_error(sources):
    _, out = sources
    with pytest.raises(DataError, match=r"hold 6 row groups, fewer than the 8 processes .* DATA.CACHE_MODE full"):
        ParquetDataset(out, "train", cache_mode="part", rank=0, world_size=8)
