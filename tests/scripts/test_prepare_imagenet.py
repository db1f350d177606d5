"""scripts/prepare_imagenet.py: official archives and Kaggle's copy -> folder / zipped layout, resumable and safe."""
import errno
import io
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
import scipy.io
import torchvision.datasets.imagenet as tv_imagenet
from PIL import Image

from data.folder import FolderDataset
from data.zipped import ZipMapDataset
import data.imagenet_sources as sources
from scripts import prepare_imagenet as prep

WNIDS = ["n01440764", "n01443537", "n01484850"]
DEVKIT_IDS = {"n01484850": 1, "n01440764": 2, "n01443537": 3}  # like the real devkit, not in sorted wnid order
VAL_IDS = [3, 1, 2, 2, 1, 3]  # the ground truth: class ID of val image 1..6
COUNTS = ["--expect-counts", "8", "6", "3"]
MTIME = 1_300_000_000


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), ((40 * i) % 256, (90 * i + 30) % 256, (200 - 15 * i) % 256)).save(buf, "JPEG")
    return buf.getvalue()


def _source_images():
    """{wnid: {name: bytes}} for train and {name: (devkit wnid, bytes)} for val; every image distinct."""
    by_id = {i: w for w, i in DEVKIT_IDS.items()}
    train, k = {}, 0
    for w, n in zip(WNIDS, (3, 2, 3)):
        train[w] = {}
        for j in range(n):
            train[w][f"{w}_{j}.JPEG"], k = _jpeg(k), k + 1
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": (by_id[c], _jpeg(k + i)) for i, c in enumerate(VAL_IDS, 1)}
    assert len({b for f in train.values() for b in f.values()} | {b for _, b in val.values()}) == 14
    return train, val


TRAIN, VAL = _source_images()
EXPECTED = {**{f"train/{w}/{n}": b for w, files in TRAIN.items() for n, b in files.items()},
            **{f"val/{w}/{n}": b for n, (w, b) in VAL.items()}}


def _info(name, data=b"", kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.type, ti.linkname = (len(data) if kind == tarfile.REGTYPE else 0), MTIME, kind, link
    return ti, data


def _tar(entries, mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def _devkit(val_ids) -> bytes:
    fields = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images")
    rows = [(i, w, f"words {w}", "gloss", 0, np.zeros(0), 0, len(TRAIN[w]))
            for i, w in sorted((i, w) for w, i in DEVKIT_IDS.items())]
    rows.append((4, "n00001740", "entity", "root", 3, np.array([1, 2, 3]), 3, 0))  # not a class (has children)
    synsets = np.empty((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        synsets[i, 0] = row
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    root = "ILSVRC2012_devkit_t12"
    return _tar([_info(root + "/", kind=tarfile.DIRTYPE), _info(root + "/data/", kind=tarfile.DIRTYPE),
                 _info(f"{root}/data/meta.mat", meta.getvalue()),
                 _info(f"{root}/data/ILSVRC2012_validation_ground_truth.txt",
                       "".join(f"{i}\n" for i in val_ids).encode())],
                mode="w:gz")


def write_archives(root, outer_extra=(), inner_extra=(), val_extra=(), val_ids=VAL_IDS, devkit=True) -> str:
    """The three official archives; the *_extra members go after the first class / first val image."""
    os.makedirs(root, exist_ok=True)
    outer = []
    for k, (w, files) in enumerate(TRAIN.items()):
        inner = [_info(n, b) for n, b in files.items()]
        inner[1:1] = list(inner_extra) if k == 0 else []
        outer.append(_info(f"{w}.tar", _tar(inner)))
    outer[1:1] = list(outer_extra)
    val = [_info(n, b) for n, (_, b) in VAL.items()]
    val[1:1] = list(val_extra)
    for name, data in (("train", _tar(outer)), ("val", _tar(val)), ("devkit", _devkit(val_ids) if devkit else None)):
        if data is not None:
            with open(os.path.join(root, sources.ARCHIVES[name]), "wb") as f:
                f.write(data)
    return str(root)


def write_kaggle(root, csv=True, csv_rows=None) -> str:
    data = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    for w, files in TRAIN.items():
        os.makedirs(os.path.join(data, "train", w))
        for n, b in files.items():
            with open(os.path.join(data, "train", w, n), "wb") as f:
                f.write(b)
    os.makedirs(os.path.join(data, "val"))
    for n, (_, b) in VAL.items():
        with open(os.path.join(data, "val", n), "wb") as f:
            f.write(b)
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w") as f:
        f.writelines(f"{w} words {w}, other words\n" for w in WNIDS)
    rows = csv_rows or [(n[:-5], w) for n, (w, _) in reversed(VAL.items())]
    if csv:
        with open(os.path.join(root, "LOC_val_solution.csv"), "w") as f:
            f.write("ImageId,PredictionString\n")
            f.writelines(f"{i},{w} 10 20 30 40 {w} 1 2 3 4 \n" for i, w in rows)
    return str(root)


def tree(root) -> dict:
    """{relative path: bytes} of every file under root except the completion markers."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != prep.STATE_DIR]
        for f in filenames:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")] = fh.read()
    return out


def snapshot_outside(tmp_path, out) -> set:
    return {os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs if not d.startswith(str(out))}


def by_name(ds) -> dict:
    """{'<wnid>/<file>': (bytes, label)} of a FolderDataset or ZipMapDataset."""
    result = {}
    for i in range(len(ds)):
        src = ds.source(i)
        if isinstance(src, str):
            with open(src, "rb") as f:
                result[os.path.relpath(src, ds.split_dir).replace(os.sep, "/")] = (f.read(), ds.target(i))
        else:
            result[ds.name(i).split("@/", 1)[1]] = (src, ds.target(i))
    return result


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    return write_archives(tmp_path_factory.mktemp("download"))


@pytest.fixture(scope="module")
def prepared(archives, tmp_path_factory):
    """(folder output, zip output) of the tiny archives."""
    root = tmp_path_factory.mktemp("prepared")
    assert prep.main([archives, str(root / "folder"), "--quiet", *COUNTS]) == 0
    assert prep.main([archives, str(root / "zip"), "--zip", "--quiet", *COUNTS]) == 0
    return str(root / "folder"), str(root / "zip")


def test_archives_to_folder_with_devkit_labels(archives, prepared, tmp_path, monkeypatch):
    folder, _ = prepared
    assert tree(folder) == EXPECTED  # byte-equal copies, each val image in the class its ground truth ID names
    assert FolderDataset(folder, "val").classes == WNIDS
    assert any(WNIDS[c - 1] != VAL[n][0] for c, n in zip(VAL_IDS, sorted(VAL)))  # the ID order matters
    # torchvision's own devkit parser gives the same val classes
    monkeypatch.setattr(tv_imagenet, "_verify_archive", lambda *a: None)
    kit = tmp_path / "kit"
    shutil.copytree(archives, kit)
    tv_imagenet.parse_devkit_archive(str(kit))
    assert tv_imagenet.load_meta_file(str(kit))[1] == [VAL[n][0] for n in sorted(VAL)]


def test_zip_matches_folder(prepared):
    folder, zipped = prepared
    assert sorted(os.listdir(zipped)) == ["train.zip", "train_map.txt", "val.zip", "val_map.txt"]
    with open(os.path.join(zipped, "train_map.txt")) as f:
        assert f.readline() == "n01440764/n01440764_0.JPEG\t0\n"
    for split in ("train", "val"):
        with zipfile.ZipFile(os.path.join(zipped, f"{split}.zip")) as zf:
            assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        z, f = by_name(ZipMapDataset(zipped, split)), by_name(FolderDataset(folder, split))
        assert z == f and {k: b for k, (b, _) in z.items()} == {k[len(split) + 1:]: b for k, b in EXPECTED.items()
                                                               if k.startswith(split)}
        assert all(label == WNIDS.index(k.split("/")[0]) for k, (_, label) in z.items())


def test_kaggle_link_and_zip(tmp_path):
    src = write_kaggle(tmp_path / "kaggle")
    before = tree(src)
    out = tmp_path / "out"
    assert prep.main([src, str(out), "--link", "--quiet", *COUNTS]) == 0
    assert tree(out) == EXPECTED
    v = next(iter(VAL))
    assert os.path.samefile(out / "val" / VAL[v][0] / v, os.path.join(src, "ILSVRC/Data/CLS-LOC/val", v))
    assert prep.main([src, str(tmp_path / "zip"), "--zip", "--quiet", *COUNTS]) == 0
    assert by_name(ZipMapDataset(str(tmp_path / "zip"), "val")) == by_name(FolderDataset(str(out), "val"))
    assert tree(src) == before  # the user's files are untouched


def test_resume_after_interruption_folder(archives, tmp_path, monkeypatch, capsys):
    out, real, calls, killed = tmp_path / "out", prep.write_file, [], []

    def killed_after_four(m, dst, link):
        calls.append(dst)
        if len(calls) == 5 and not killed:  # a kill in the middle of the fifth file
            killed.append(dst)
            with open(dst + ".part", "wb") as f:
                f.write(m.fileobj.read(100))
            raise KeyboardInterrupt
        real(m, dst, link)

    monkeypatch.setattr(prep, "write_file", killed_after_four)
    assert prep.main([archives, str(out), *COUNTS]) == 130
    err = capsys.readouterr().err
    assert "train: 4/8 images" in err and "rerun the same command" in err  # the progress line, then the advice
    partial = tree(out)
    assert len([k for k in partial if not k.endswith(".part")]) == 4
    assert all(EXPECTED[k] == b for k, b in partial.items() if not k.endswith(".part"))  # whole files only
    calls.clear()
    assert prep.main([archives, str(out), "--quiet", *COUNTS]) == 0
    assert tree(out) == EXPECTED and len(calls) == 14 - 4  # finished class and files are not written again
    # a lost marker and a lost file: only that class is read again, the file restored
    os.remove(out / prep.STATE_DIR / "train" / f"{WNIDS[2]}.done")
    os.remove(out / prep.STATE_DIR / "train.done")
    os.remove(out / "train" / WNIDS[2] / f"{WNIDS[2]}_1.JPEG")
    calls.clear()
    assert prep.main([archives, str(out), "--quiet", *COUNTS]) == 0
    assert tree(out) == EXPECTED and len(calls) == 1


def test_resume_after_interruption_zip(archives, prepared, tmp_path, monkeypatch):
    out, real, calls = tmp_path / "out", prep.ZipSink.write, []

    def killed_in_val(self, split, m):
        calls.append(m.name)
        if len(calls) == 10:
            raise KeyboardInterrupt
        return real(self, split, m)

    monkeypatch.setattr(prep.ZipSink, "write", killed_in_val)
    assert prep.main([archives, str(out), "--zip", "--quiet", *COUNTS]) == 130
    assert sorted(os.listdir(out)) == ["train.zip", "train_map.txt"]  # val never under its final name, its part freed
    train_zip = os.stat(out / "train.zip").st_mtime_ns
    monkeypatch.setattr(prep.ZipSink, "write", real)
    assert prep.main([archives, str(out), "--zip", "--quiet", *COUNTS]) == 0
    assert os.stat(out / "train.zip").st_mtime_ns == train_zip  # the finished split is kept
    assert tree(out) == tree(prepared[1])


HOSTILE = {
    "outer absolute path": dict(outer_extra=[_info("/abs/n01443537.tar", b"x")]),
    "outer ..": dict(outer_extra=[_info("../n01443537.tar", b"x")]),
    "outer symlink": dict(outer_extra=[_info("n01443537.tar", kind=tarfile.SYMTYPE, link="/etc/passwd")]),
    "inner absolute path": dict(inner_extra=[_info("/abs/evil.JPEG", b"x")]),
    "inner ..": dict(inner_extra=[_info("../../../evil.JPEG", b"x")]),
    "inner symlink": dict(inner_extra=[_info("evil.JPEG", kind=tarfile.SYMTYPE, link="/etc/passwd")]),
    "inner hard link": dict(inner_extra=[_info("evil.JPEG", kind=tarfile.LNKTYPE, link="n01440764_0.JPEG")]),
    "inner fifo": dict(inner_extra=[_info("evil.JPEG", kind=tarfile.FIFOTYPE)]),
    "val ..": dict(val_extra=[_info("../evil.JPEG", b"x")]),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_refused(case, tmp_path, capsys):
    src, out = write_archives(tmp_path / "download", **HOSTILE[case]), tmp_path / "out"
    before = snapshot_outside(tmp_path, out)
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 2
    err = capsys.readouterr().err
    archive = sources.ARCHIVES["val" if case.startswith("val") else "train"]
    assert "unsafe" in err and archive in err and err.count("\n") == 1
    if case.startswith("inner"):
        assert f"{archive}:n01440764.tar" in err
    assert snapshot_outside(tmp_path, out) == before
    assert all(EXPECTED[k] == b for k, b in tree(out).items())  # only whole source images were written


@pytest.mark.parametrize("where", ["inside an image", "between classes"])
def test_truncated_train_tar(where, tmp_path, capsys):
    src, out = write_archives(tmp_path / "download"), tmp_path / "out"
    path = os.path.join(src, sources.ARCHIVES["train"])
    with tarfile.open(path) as tf:
        second, third = tf.getmembers()[1:3]
        with tarfile.open(fileobj=tf.extractfile(second)) as inner:
            cut = second.offset_data + inner.getmembers()[1].offset_data + 100
    with open(path, "rb") as f:
        full = f.read()
    with open(path, "wb") as f:
        f.write(full[:cut] if where == "inside an image" else full[:third.offset])
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and sources.ARCHIVES["train"] in err and "download it again" in err.lower()
    written = tree(out)
    assert all(EXPECTED[k] == b for k, b in written.items())  # no half file under a final name, no .part
    # tars are read in 10 KiB blocks, so the class holding the cut yields no image here
    assert len(written) == (3 if where == "inside an image" else 5)
    with open(path, "wb") as f:  # the downloaded again archive completes the same output
        f.write(full)
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 0 and tree(out) == EXPECTED


BAD_INPUT = {
    "missing devkit": (lambda p: write_archives(p, devkit=False), "ILSVRC2012_devkit_t12.tar.gz is missing"),
    "val image without label": (lambda p: write_archives(p, val_ids=VAL_IDS[:5]), "has no label"),
    "ground truth count": (lambda p: write_archives(p, val_ids=VAL_IDS + [1]), "holds 6 validation images"),
    "kaggle val without csv": (lambda p: write_kaggle(p, csv=False), "LOC_val_solution.csv is missing"),
    "kaggle unknown wnid": (lambda p: write_kaggle(p, csv_rows=[(n[:-5], "n09999999") for n in VAL]),
                            "not in LOC_synset_mapping.txt"),
    "kaggle image not in csv": (lambda p: write_kaggle(p, csv_rows=[(n[:-5], w) for n, (w, _) in VAL.items()][1:]),
                                "has no row in"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_one_clear_error(case, tmp_path, capsys):
    make, message = BAD_INPUT[case]
    src, out = make(tmp_path / "download"), tmp_path / "out"
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert all(EXPECTED[k] == b for k, b in tree(out).items() if os.path.isdir(out))


def test_disk_full_mid_write(archives, tmp_path, monkeypatch, capsys):
    real, calls = prep.write_file, []

    def disk_full_on_third(m, dst, link):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(m, dst, link)

    monkeypatch.setattr(prep, "write_file", disk_full_on_third)
    assert prep.main([archives, str(tmp_path / "out"), "--quiet", *COUNTS]) == 2
    assert "disk is full" in capsys.readouterr().err and len(tree(tmp_path / "out")) == 2


def test_disk_space_margin(archives, tmp_path, capsys):
    out = tmp_path / "out"
    assert prep.main([archives, str(out), "--quiet", "--min-free-mb", str(2**40), *COUNTS]) == 2
    err = capsys.readouterr().err
    assert "Not enough disk space" in err and "bytes are free" in err and "n01440764_0.JPEG" in err
    assert tree(out) == {}


def test_check_only(archives, prepared, capsys):
    folder, zipped = prepared
    for out in (folder, zipped):
        assert prep.main(["--check-only", out, *COUNTS]) == 0
        assert prep.main(["--check-only", archives, out, *COUNTS]) == 0  # wnids compared with the devkit's
        capsys.readouterr()
        assert prep.main(["--check-only", out, "--expect-counts", "9", "6", "3"]) == 1
        assert "train has 8 images, expected 9" in capsys.readouterr().err
        assert prep.main(["--check-only", out]) == 1  # the full ImageNet numbers by default
        captured = capsys.readouterr()
        assert "expected 1,281,167" in captured.out and "50 val images" in captured.err


def _hub_shards(root, names) -> str:
    """The tiny data set as the Hub's parquet shards: rows shuffled, labels the sorted wnid index, ClassLabel names."""
    from data.parquet import write_shards

    rng = np.random.default_rng(0)
    for split, hub in (("train", "train"), ("val", "validation")):
        rows = [(b, WNIDS.index(k.split("/")[1])) for k, b in EXPECTED.items() if k.startswith(split + "/")]
        write_shards([rows[i] for i in rng.permutation(len(rows))], str(root), hub, num_shards=2, rows_per_group=2,
                     class_names=names)
    return str(root)


@pytest.mark.parametrize("names", [WNIDS, ["tench", "goldfish", "great white shark"]])
def test_parquet_shards_to_folder_and_zip_keep_each_images_label(prepared, tmp_path, names):
    """Whatever the ClassLabel names (wnids, or the Hub's human-readable ones), the folder and zip written from the
    shards give every image the label the shard stored, which is the one the archives' folder layout gives it."""
    src = _hub_shards(tmp_path / "hub", names)
    assert prep.main([src, str(tmp_path / "folder"), "--quiet", *COUNTS]) == 0
    assert prep.main([src, str(tmp_path / "zip"), "--zip", "--quiet", *COUNTS]) == 0
    classes = WNIDS if names == WNIDS else ["0000", "0001", "0002"]
    for split in ("train", "val"):
        archives = {b: label for b, label in by_name(FolderDataset(prepared[0], split)).values()}
        folder = FolderDataset(str(tmp_path / "folder"), split)
        assert folder.classes == classes
        for ds in (folder, ZipMapDataset(str(tmp_path / "zip"), split)):
            got = {b: label for b, label in by_name(ds).values()}
            assert got == archives  # the same image, the same label, whatever the source


def test_parquet_source_errors_name_the_shard(tmp_path, capsys):
    from data.parquet import write_shards

    write_shards([(_jpeg(0), 0), (_jpeg(1), 5)], str(tmp_path / "hub"), "train", class_names=WNIDS)
    write_shards([(_jpeg(2), 0)], str(tmp_path / "hub"), "validation", class_names=WNIDS)
    assert prep.main([str(tmp_path / "hub"), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train-00000-of-00001.parquet row 1 has label 5, outside 0..2" in err
    assert not os.path.exists(tmp_path / "out" / prep.STATE_DIR / "train.done")


def test_a_class_tar_cut_short_by_a_damaged_header_is_not_marked_finished(tmp_path, capsys):
    """A stream tar ends quietly at a damaged header: the devkit's training count per class catches it, the class
    is not marked finished, and the archive downloaded again completes the output."""
    src = write_archives(tmp_path / "download")
    path = os.path.join(src, sources.ARCHIVES["train"])
    full = open(path, "rb").read()
    first = TRAIN[WNIDS[0]]
    inner = _tar([_info(n, b) for n, b in first.items()])
    damaged = bytearray(inner)
    damaged[512 + len(_pad(next(iter(first.values())))) + 100] ^= 0xFF  # the second member's header (mode field)
    with open(path, "wb") as f:
        f.write(full.replace(inner, bytes(damaged)))
    out = tmp_path / "out"
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 2
    err = capsys.readouterr().err
    assert f"{WNIDS[0]}.tar holds 1 images, the devkit lists 3 for {WNIDS[0]}" in err
    assert not os.path.exists(out / prep.STATE_DIR / "train" / f"{WNIDS[0]}.done")
    with open(path, "wb") as f:
        f.write(full)
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 0 and tree(out) == EXPECTED


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def test_a_failed_check_clears_the_markers_so_a_rerun_looks_again(tmp_path, capsys):
    src = write_kaggle(tmp_path / "kaggle")
    missing = os.path.join(src, "ILSVRC/Data/CLS-LOC/train", WNIDS[1], f"{WNIDS[1]}_1.JPEG")
    data = open(missing, "rb").read()
    os.remove(missing)  # a class folder still being unpacked
    out = tmp_path / "out"
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 1
    assert "train has 7 images, expected 8" in capsys.readouterr().err
    assert not os.path.exists(out / prep.STATE_DIR)
    open(missing, "wb").write(data)
    assert prep.main([src, str(out), "--quiet", *COUNTS]) == 0 and tree(out) == EXPECTED


def test_zip_space_check_counts_the_directory_and_map_still_to_come(archives, tmp_path, monkeypatch, capsys):
    """The free space a zip's end needs (central directory, map) is counted before each member, so a disk that
    holds the images but not that end stops the run before it is full, and the partial zip is removed."""
    out = tmp_path / "out"
    members = sum(30 + len(k) - len("train/") + 20 + len(b) for k, b in EXPECTED.items() if k.startswith("train/"))
    budget = 64 * 2**20 + members + 16  # room for the members and their local headers, not for the end

    def usage(path):  # the free space falls as the output grows
        used = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        return shutil._ntuple_diskusage(10**12, used, budget - used)

    monkeypatch.setattr(prep.shutil, "disk_usage", usage)
    assert prep.main([archives, str(out), "--zip", "--quiet", *COUNTS]) == 2
    assert "Not enough disk space" in capsys.readouterr().err
    assert not os.path.exists(out / "train.zip.tmp") and not os.path.exists(out / "train.zip")


def test_parquet_source_without_shards_is_one_clear_error(tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    assert prep.main([str(tmp_path / "empty"), str(tmp_path / "out"), "--source", "parquet", "--quiet"]) == 2
    assert "No parquet shards under" in capsys.readouterr().err


def test_a_member_name_the_map_cannot_hold_is_refused(tmp_path, capsys):
    src = write_archives(tmp_path / "download", inner_extra=[_info("evil\tname.JPEG", b"x")])
    assert prep.main([src, str(tmp_path / "out"), "--zip", "--quiet", *COUNTS]) == 2
    err = capsys.readouterr().err
    assert "has a tab, line break or '@' in its name" in err and "n01440764.tar" in err


def test_an_unwritable_output_is_one_error_naming_it(archives, tmp_path, capsys, monkeypatch):
    def denied(m, dst, link):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(prep, "write_file", denied)
    assert prep.main([archives, str(tmp_path / "out"), "--quiet", *COUNTS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Permission denied (") and "n01440764_0.JPEG" in err and err.count("\n") == 1
