"""Turn a downloaded ImageNet-1k into the folder layout (or, with --zip, the zipped layout) this repository reads.

Official archives from image-net.org, all three in one folder:

    python scripts/prepare_imagenet.py ~/downloads /data/imagenet [--zip]
    # ~/downloads: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, ILSVRC2012_devkit_t12.tar.gz

Kaggle's copy (imagenet-object-localization-challenge, unzipped):

    python scripts/prepare_imagenet.py ~/kaggle /data/imagenet [--link] [--zip]
    # ~/kaggle: ILSVRC/Data/CLS-LOC/{train/<wnid>,val}/*.JPEG, LOC_val_solution.csv, LOC_synset_mapping.txt

The Hugging Face Hub's parquet shards (train on them in place with --data-path; this writes the zip layout for
machines whose memory does not hold a rank's share of the shards, see data/parquet.py):

    python scripts/prepare_imagenet.py ~/imagenet_hf /data/imagenet_zip --zip
    # ~/imagenet_hf: data/train-*.parquet, data/validation-*.parquet; class folders are the ClassLabel names when
    # they are sorted wnids, else the zero-padded label (0000 ... 0999), so the labels stay the shards' own

Output: OUT/{train,val}/<wnid>/<image> (DATA.DATA_PATH OUT), or OUT/{train,val}.zip with stored members
"<wnid>/<image>" and OUT/{train,val}_map.txt lines "<wnid>/<image><TAB><label>" (DATA.ZIP_MODE True); labels are
indices in sorted wnid order, a val image's class is the one the devkit (or LOC_val_solution.csv) gives it.
Archives are read as streams (the per-class train tars straight out of the outer tar), so the images exist on
disk once; Kaggle's files are copied, or hard-linked with --link; the source is never changed. Archives are
untrusted: a member with an absolute path, a '..' component, a link or any other non-regular file stops the
run (directory entries are skipped), and nothing is written outside OUT.

Resuming: rerun the same command. Every file is written under a temporary name and renamed when whole; a
finished class (train) or split leaves a marker in OUT/.prepare_imagenet/ and is skipped. With --zip a split's
zip is written as <split>.zip.tmp and renamed when complete, so an interrupted split starts again from scratch.
The output is checked at the end (classes, train and val images, val images per class, class names equal the
devkit's or mapping's wnids; --expect-counts TRAIN VAL CLASSES for a subset); --check-only OUT (or SRC OUT,
to compare the wnids too) runs the check alone. Exit status: 0 ok, 1 the check found a difference, 2 the
input or the disk cannot be used (the message says what to do).
"""
from __future__ import annotations

import argparse
import collections
import csv
import errno
import gzip
import io
import logging
import os
import posixpath
import re
import shutil
import sys
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.errors import DataError  # noqa: E402
from data.folder import list_classes, scan_split  # noqa: E402
from data.images import is_image_file  # noqa: E402
from data.zipped import ZipMapDataset, read_map  # noqa: E402

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
IMAGENET_COUNTS = (1_281_167, 50_000, 1_000)  # ILSVRC-2012: train images, val images, classes
ARCHIVES = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar",
            "devkit": "ILSVRC2012_devkit_t12.tar.gz"}
DEVKIT_META, DEVKIT_GT = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_DIR, KAGGLE_VAL_CSV, KAGGLE_SYNSETS = "ILSVRC/Data/CLS-LOC", "LOC_val_solution.csv", "LOC_synset_mapping.txt"
STATE_DIR = ".prepare_imagenet"  # completion markers of the folder output
WNID = re.compile(r"n\d{8}")
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)  # what a truncated or corrupt archive raises
ZIP_TIMES = (315_532_800, 4_102_444_800)  # 1980-01-01 .. 2100-01-01, within what a zip entry's date can hold


@dataclass(frozen=True)
class Counts:
    train: int
    val: int
    classes: int


@dataclass
class Member:
    """One image to write: its class, file name, size, and either an open stream (archives) or a path (Kaggle)."""
    wnid: str
    name: str
    size: int
    mtime: float
    origin: str  # archive:member or a path, for messages
    fileobj: BinaryIO | None = None
    path: str = ""


def regular_member(archive: str, m: tarfile.TarInfo) -> bool:
    """True for a regular file, False for a directory entry (skipped); raise for anything unsafe."""
    parts = m.name.replace("\\", "/").split("/")
    if m.name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", m.name):
        raise DataError(f"{archive}: member {m.name!r} has an absolute path or a '..' component; the archive is "
                        "unsafe, refusing to unpack it. Download the official archive again.")
    if m.isdir():
        return False
    if not m.isreg():
        kind = ("a symbolic link" if m.issym() else "a hard link" if m.islnk() else
                "a device or fifo" if m.ischr() or m.isblk() or m.isfifo() else "not a regular file")
        raise DataError(f"{archive}: member {m.name!r} is {kind}; the archive is unsafe, refusing to unpack it "
                        "(only regular files are accepted). Download the official archive again.")
    return True


def image_name(origin: str, name: str) -> str:
    """The member's file name when it is an image to keep, else '' (with a warning)."""
    base = posixpath.basename(name)
    if is_image_file(base) and not base.startswith("."):
        return base
    log.warning("skipping %s:%s: not an image file", origin, name)
    return ""


def check_wnids(wnids: list[str], origin: str) -> list[str]:
    """The sorted wnids, after checking each is a WordNet id (they become folder names) and none repeats."""
    bad = [w for w in wnids if not WNID.fullmatch(w)]
    if bad or not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{origin} lists {bad[0]!r} (not a WordNet id like n01440764)" if bad else
                        f"{origin} lists no classes or a class twice; use the ILSVRC-2012 file.")
    return sorted(wnids)


def read_devkit(path: str) -> tuple[dict[int, str], list[int], dict[str, int]]:
    """(ILSVRC2012_ID -> wnid of the leaf classes, the class ID of each val image in file order, training images
    per wnid where the devkit lists them), read in memory."""
    import scipy.io
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|gz") as tf:
            for m in tf:
                key = "/".join(m.name.split("/")[-2:])
                if regular_member(path, m) and key in (DEVKIT_META, DEVKIT_GT) and m.size < 2**28:
                    files[key] = tf.extractfile(m).read()
    except TAR_ERRORS as e:
        raise DataError(f"{path} is truncated or corrupt ({e}); download it again.") from None
    missing = [k for k in (DEVKIT_META, DEVKIT_GT) if k not in files]
    if missing:
        raise DataError(f"{path} holds no {missing[0]}; download the ILSVRC-2012 devkit ({ARCHIVES['devkit']}).")
    # torchvision's parse_meta_mat is nested inside parse_devkit_archive, which also demands the official md5 and
    # unpacks the whole archive to disk; these lines follow it.
    try:
        synsets = np.atleast_1d(scipy.io.loadmat(io.BytesIO(files[DEVKIT_META]), squeeze_me=True)["synsets"])
        leaves = [s for s in synsets if int(s["num_children"]) == 0]
        idx_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        train_counts = ({str(s["WNID"]): int(s["num_train_images"]) for s in leaves}
                        if "num_train_images" in (synsets.dtype.names or ()) else {})
        val_ids = [int(x) for x in files[DEVKIT_GT].split()]
    except (ValueError, KeyError, TypeError, IndexError, scipy.io.matlab.MatReadError) as e:
        raise DataError(f"{path}: cannot read {DEVKIT_META} / {DEVKIT_GT} ({e}); download the devkit again.") from None
    unknown = sorted(set(val_ids) - set(idx_to_wnid))
    if unknown:
        raise DataError(f"{path}: the val ground truth names class ID {unknown[0]}, which {DEVKIT_META} lacks.")
    return idx_to_wnid, val_ids, train_counts


class ArchiveSource:
    """The official archives: a train tar of per-class tars, a flat val tar, the devkit with the val labels."""

    marks_groups = True  # a finished class is marked and skipped by a rerun

    def __init__(self, root: str) -> None:
        self.root = root
        devkit = os.path.join(root, ARCHIVES["devkit"])
        if not os.path.isfile(devkit):
            raise DataError(f"{devkit} is missing: download {ARCHIVES['devkit']} (Development kit, Task 1 & 2) from "
                            f"image-net.org into {root}; it holds the class list and the validation labels.")
        self.idx_to_wnid, self.val_ids, self.train_counts = read_devkit(devkit)
        self.wnids = check_wnids(list(self.idx_to_wnid.values()), devkit)
        self.reading = devkit

    def check_inputs(self, splits: list[str]) -> None:
        for split in splits:
            path = os.path.join(self.root, ARCHIVES[split])
            if not os.path.isfile(path):
                raise DataError(f"{path} is missing: download it from image-net.org into {self.root}.")

    def groups(self, split: str) -> Iterator[tuple[str, Iterator[Member]]]:
        """(class wnid, its images) per inner train tar, or ('all', every val image)."""
        path = self.reading = os.path.join(self.root, ARCHIVES[split])
        with tarfile.open(path, "r|") as tf:
            if split == "val":
                yield "all", self._val(path, tf)
                return
            known, seen = set(self.wnids), set()
            for m in tf:
                if not regular_member(path, m):
                    continue
                wnid, ext = posixpath.splitext(posixpath.basename(m.name))
                if ext != ".tar" or wnid not in known:
                    raise DataError(f"{path}: member {m.name!r} is not a per-class archive <wnid>.tar of a devkit "
                                    f"class; expected the official {ARCHIVES['train']}.")
                seen.add(wnid)
                yield wnid, self._class(f"{path}:{m.name}", wnid, tf, m)
                self.reading = path
        if seen != known:
            raise DataError(f"{path} ended after {len(seen)} of {len(known)} class archives "
                            f"({min(known - seen)}.tar is missing): it is truncated; download it again and rerun the "
                            "same command (finished classes are kept).")

    def _class(self, label: str, wnid: str, outer: tarfile.TarFile, m: tarfile.TarInfo) -> Iterator[Member]:
        """The images of one inner tar; raises (so the class is not marked finished) when it holds fewer than the
        devkit lists: a stream tar ends quietly at a damaged header."""
        self.reading, n = label, 0
        with tarfile.open(fileobj=outer.extractfile(m), mode="r|") as inner:
            for im in inner:
                if regular_member(label, im) and (name := image_name(label, im.name)):
                    n += 1
                    yield Member(wnid, name, im.size, im.mtime, f"{label}:{im.name}", inner.extractfile(im))
        expected = self.train_counts.get(wnid)
        if expected is not None and n != expected:
            raise DataError(f"{label} holds {n} images, the devkit lists {expected} for {wnid}: the archive is damaged; "
                            "download it again and rerun the same command (finished classes are kept).")

    def _val(self, path: str, tf: tarfile.TarFile) -> Iterator[Member]:
        n = 0
        for m in tf:
            if not regular_member(path, m):
                continue
            name = posixpath.basename(m.name)
            match = VAL_NAME.fullmatch(name)
            if not match:
                raise DataError(f"{path}: member {m.name!r} is not a validation image name like "
                                f"ILSVRC2012_val_00000001.JPEG; expected the official {ARCHIVES['val']}.")
            i = int(match.group(1))
            if not 1 <= i <= len(self.val_ids):
                raise DataError(f"{path}: {name} has no label: the devkit's ground truth lists {len(self.val_ids)} "
                                "images; use the devkit that belongs to this archive.")
            n += 1
            yield Member(self.idx_to_wnid[self.val_ids[i - 1]], name, m.size, m.mtime, f"{path}:{m.name}",
                         tf.extractfile(m))
        if n != len(self.val_ids):
            raise DataError(f"{path} holds {n} validation images, the devkit's ground truth lists {len(self.val_ids)}: "
                            "the archive is truncated or from another release; download it again and rerun.")


def _images(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if is_image_file(f) and not f.startswith("."))


class KaggleSource:
    """Kaggle's copy: ILSVRC/Data/CLS-LOC/{train/<wnid>,val}/*.JPEG, LOC_val_solution.csv, LOC_synset_mapping.txt.
    Its classes are not marked finished (nothing says how many images a class folder should hold, and one still
    being unpacked would stay short): a rerun looks at every file again, skipping those already whole."""

    marks_groups = False

    def __init__(self, root: str) -> None:
        self.root, self.data = root, os.path.join(root, *KAGGLE_DIR.split("/"))
        mapping = os.path.join(root, KAGGLE_SYNSETS)
        if not os.path.isfile(mapping):
            raise DataError(f"{mapping} is missing: it comes with Kaggle's imagenet-object-localization-challenge "
                            "download; put it next to ILSVRC/.")
        with open(mapping, encoding="utf-8") as f:
            self.wnids = check_wnids([line.split()[0] for line in f if line.strip()], mapping)
        self.reading = self.data
        self._val_labels: dict[str, str] | None = None

    def check_inputs(self, splits: list[str]) -> None:
        for split in splits:
            if not os.path.isdir(os.path.join(self.data, split)):
                raise DataError(f"{os.path.join(self.data, split)} is missing; expected Kaggle's {KAGGLE_DIR}/{split}.")
        if "val" in splits:
            self._val_labels = self._read_csv()

    def _read_csv(self) -> dict[str, str]:
        path, known, labels = os.path.join(self.root, KAGGLE_VAL_CSV), set(self.wnids), {}
        if not os.path.isfile(path):
            raise DataError(f"{path} is missing: Kaggle's val folder is flat and its labels are in that file; download "
                            f"{KAGGLE_VAL_CSV} from the competition's data page into {self.root}.")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path} lacks the columns ImageId,PredictionString; download {KAGGLE_VAL_CSV} again.")
            for row in reader:
                wnid = (row["PredictionString"] or "").split()[:1]
                if not wnid or wnid[0] not in known:
                    raise DataError(f"{path}:{reader.line_num}: {row['ImageId']} has class {' '.join(wnid)!r}, which "
                                    f"is not in {KAGGLE_SYNSETS}; download matching copies of both files.")
                labels[row["ImageId"]] = wnid[0]
        return labels

    def _member(self, wnid: str, folder: str, name: str) -> Member:
        path = os.path.join(folder, name)
        st = os.stat(path)
        return Member(wnid, name, st.st_size, st.st_mtime, path, path=path)

    def groups(self, split: str) -> Iterator[tuple[str, Iterator[Member]]]:
        folder = self.reading = os.path.join(self.data, split)
        if split == "val":
            yield "all", self._val(folder)
            return
        for wnid in list_classes(folder):
            if wnid not in self.wnids:
                raise DataError(f"{os.path.join(folder, wnid)} is not a class of {KAGGLE_SYNSETS}.")
            d = os.path.join(folder, wnid)
            yield wnid, (self._member(wnid, d, name) for name in _images(d))

    def _val(self, folder: str) -> Iterator[Member]:
        labels = self._val_labels if self._val_labels is not None else self._read_csv()
        names, csv_path = _images(folder), os.path.join(self.root, KAGGLE_VAL_CSV)
        unlabeled = [n for n in names if os.path.splitext(n)[0] not in labels]
        if unlabeled:
            raise DataError(f"{os.path.join(folder, unlabeled[0])} has no row in {csv_path} ({len(unlabeled)} images "
                            "lack one); download matching copies of the val folder and the csv.")
        if len(names) != len(labels):
            raise DataError(f"{csv_path} lists {len(labels)} images, {folder} holds {len(names)}; download the "
                            "missing val images (or the matching csv).")
        for name in names:
            yield self._member(labels[os.path.splitext(name)[0]], folder, name)


class ParquetSource:
    """The Hugging Face Hub's parquet shards (data/train-*.parquet, data/validation-*.parquet; data/parquet.py also
    reads them in place). Classes are named by label: the ClassLabel names where they are wnids in sorted order, else
    the zero-padded label (0000 ... 0999), so that the sorted names give back the stored labels either way."""

    marks_groups = True  # a shard read to its end is whole (a damaged one raises)

    def __init__(self, root: str) -> None:
        from data.parquet import find_shards, shard_classes

        self.root, self.reading = root, root
        self.shards = {split: find_shards(root, split) for split in SPLITS}
        if not any(self.shards.values()):
            raise DataError(f"No parquet shards under {root} (data/train-*.parquet, data/validation-*.parquet).")
        names = shard_classes(next(p for paths in self.shards.values() for p in paths))
        if not names:
            raise DataError(f"The shards under {root} name no classes (no ClassLabel in their metadata); train on them "
                            "in place (--data-path) instead.")
        wnid_names = all(WNID.fullmatch(n) for n in names) and names == sorted(names)
        self.wnids = list(names) if wnid_names else [f"{i:0{max(4, len(str(len(names) - 1)))}d}"
                                                    for i in range(len(names))]

    def check_inputs(self, splits: list[str]) -> None:
        for split in splits:
            if not self.shards[split]:
                raise DataError(f"No {split} shards under {self.root} (data/{'validation' if split == 'val' else split}"
                                "-*.parquet); download the whole data set.")

    def groups(self, split: str) -> Iterator[tuple[str, Iterator[Member]]]:
        """(shard file name, its images) per shard."""
        for path in self.shards[split]:
            self.reading = path
            yield os.path.basename(path), self._rows(path)

    def _rows(self, path: str) -> Iterator[Member]:
        from data.parquet import shard_rows

        stem, mtime = os.path.basename(path).split(".")[0], os.path.getmtime(path)
        for row, (data, label, stored) in enumerate(shard_rows(path)):
            if not 0 <= label < len(self.wnids):
                raise DataError(f"{path} row {row} has label {label}, outside 0..{len(self.wnids) - 1}: a split without "
                                "labels (such as test) cannot be prepared.")
            ext = os.path.splitext(stored)[1] if stored and is_image_file(stored) else ".JPEG"
            yield Member(self.wnids[label], f"{stem}_{row:07d}{ext}", len(data), mtime, f"{path} row {row}",
                         io.BytesIO(data))


def open_source(src: str, kind: str) -> ArchiveSource | KaggleSource | ParquetSource:
    """The download in `src`: the official archives, Kaggle's copy or the Hub's parquet shards ('auto' tells)."""
    from data.parquet import find_shards

    archives = f"the official archives ({', '.join(ARCHIVES.values())})"
    kaggle = f"Kaggle's {KAGGLE_DIR}, {KAGGLE_SYNSETS}"
    if not os.path.isdir(src):
        raise DataError(f"{src} is not a folder; pass the folder holding {archives}, {kaggle} or parquet shards.")
    if kind == "auto":
        if any(os.path.isfile(os.path.join(src, a)) for a in ARCHIVES.values()):
            kind = "archives"
        elif any(os.path.exists(os.path.join(src, *p.split("/"))) for p in (KAGGLE_DIR, KAGGLE_SYNSETS)):
            kind = "kaggle"
        elif any(find_shards(src, split) for split in SPLITS):
            kind = "parquet"
        else:
            raise DataError(f"{src} holds neither {archives}, {kaggle} nor parquet shards (data/train-*.parquet).")
    return {"archives": ArchiveSource, "kaggle": KaggleSource, "parquet": ParquetSource}[kind](src)


def ensure_space(out: str, size: int, origin: str, min_free: int) -> None:
    """Stop before a write that would leave less than `min_free` bytes free on OUT's disk."""
    free = shutil.disk_usage(out).free
    if size + min_free > free:
        raise DataError(f"Not enough disk space in {out} for {origin}: it needs {size:,} bytes plus a "
                        f"{min_free // 2**20} MiB margin (--min-free-mb), {free:,} bytes are free. Free some space "
                        "and rerun the same command to continue.")


def write_file(m: Member, dst: str, link: bool) -> None:
    """Write one image under a temporary name and rename it, so a final name only ever holds a whole file."""
    tmp = dst + ".part"
    try:
        if os.path.lexists(tmp):
            os.remove(tmp)
        if m.path and link:
            os.link(m.path, tmp)
        elif m.path:
            shutil.copyfile(m.path, tmp)
        else:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(m.fileobj, f, 1 << 20)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


class Sink:
    """Where images go: a split is begun, written group by group, finished; `close` runs however it ends."""

    out: str

    def split_done(self, split: str) -> bool:
        raise NotImplementedError

    def group_done(self, split: str, key: str) -> bool:
        return False

    def group_size(self, split: str, key: str) -> int:
        return 0

    def begin(self, split: str) -> None:
        pass

    def write(self, split: str, m: Member) -> bool:
        """Store one image; False when it was already there."""
        raise NotImplementedError

    def finish_group(self, split: str, key: str) -> None:
        pass

    def finish_split(self, split: str) -> None:
        pass

    def close(self) -> None:
        pass


class FolderSink(Sink):
    """OUT/<split>/<wnid>/<image>; markers in OUT/.prepare_imagenet/ record finished classes and splits."""

    def __init__(self, out: str, min_free: int, link: bool) -> None:
        self.out, self.min_free, self.link = out, min_free, link
        self._dirs: set[str] = set()

    def _marker(self, *parts: str) -> str:
        return os.path.join(self.out, STATE_DIR, *parts) + ".done"

    def split_done(self, split: str) -> bool:
        return os.path.isfile(self._marker(split))

    def group_done(self, split: str, key: str) -> bool:
        return os.path.isfile(self._marker(split, key))

    def group_size(self, split: str, key: str) -> int:
        d = os.path.join(self.out, split, key)
        return len(os.listdir(d)) if os.path.isdir(d) else 0

    def write(self, split: str, m: Member) -> bool:
        """Write `m` unless an interrupted run already did (a final name only holds a whole file)."""
        folder = os.path.join(self.out, split, m.wnid)
        dst = os.path.join(folder, m.name)
        if os.path.isfile(dst) and os.path.getsize(dst) == m.size:
            return False
        ensure_space(self.out, 0 if self.link and m.path else m.size, m.origin, self.min_free)
        if folder not in self._dirs:
            os.makedirs(folder, exist_ok=True)
            self._dirs.add(folder)
        try:
            write_file(m, dst, self.link)
        except OSError as e:
            if self.link and e.errno in (errno.EXDEV, errno.EPERM):
                raise DataError(f"Cannot hard-link {m.path} into {folder} ({e.strerror}): --link needs SRC and OUT "
                                "on one file system; drop --link to copy.") from None
            raise
        return True

    def finish_group(self, split: str, key: str) -> None:
        _touch(self._marker(split, key))

    def finish_split(self, split: str) -> None:
        _touch(self._marker(split))


class ZipSink(Sink):
    """OUT/<split>.zip (stored members '<wnid>/<image>') and <split>_map.txt, renamed into place when complete; an
    unfinished <split>.zip.tmp is deleted (a rerun writes the split again)."""

    def __init__(self, out: str, wnids: list[str], min_free: int) -> None:
        self.out, self.min_free = out, min_free
        self.labels = {w: i for i, w in enumerate(wnids)}
        self.zf: zipfile.ZipFile | None = None
        self.entries: list[tuple[int, str]] = []
        self.tail = 0  # bytes still to come after the members: central directory and map file

    def _paths(self, split: str) -> tuple[str, str]:
        return os.path.join(self.out, f"{split}.zip"), os.path.join(self.out, f"{split}_map.txt")

    def split_done(self, split: str) -> bool:
        return all(os.path.isfile(p) for p in self._paths(split))

    def begin(self, split: str) -> None:
        self.zf = zipfile.ZipFile(self._paths(split)[0] + ".tmp", "w", zipfile.ZIP_STORED, allowZip64=True)
        self.entries, self.tail = [], 22 + 76  # end of central directory records (zip64 included)

    def write(self, split: str, m: Member) -> bool:
        name = f"{m.wnid}/{m.name}"
        entry = len(name.encode()) + 46 + 28  # central directory entry with a zip64 extra field
        line = len(f"{name}\t{self.labels[m.wnid]}\n".encode())
        # the local header, the image, and everything still to be written after it (so the end cannot overrun)
        ensure_space(self.out, 30 + len(name.encode()) + 20 + m.size + self.tail + entry + line, m.origin,
                     self.min_free)
        info = zipfile.ZipInfo(name, time.localtime(min(max(m.mtime, ZIP_TIMES[0]), ZIP_TIMES[1]))[:6])
        info.file_size, info.external_attr = m.size, 0o644 << 16
        with self.zf.open(info, "w") as dst:
            if m.path:
                with open(m.path, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
            else:
                shutil.copyfileobj(m.fileobj, dst, 1 << 20)
        self.entries.append((self.labels[m.wnid], info.filename))
        self.tail += entry + line
        return True

    def finish_split(self, split: str) -> None:
        """Rename the zip and the map into place."""
        zip_path, map_path = self._paths(split)
        self.zf.close()
        self.zf = None
        with open(map_path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(f"{name}\t{label}\n" for label, name in sorted(self.entries))
        os.replace(zip_path + ".tmp", zip_path)
        os.replace(map_path + ".tmp", map_path)

    def close(self) -> None:
        if self.zf is not None:  # the split did not finish: its partial zip is never resumed, so free the disk
            path = self.zf.filename
            try:
                self.zf.close()
            except OSError:
                pass
            self.zf = None
            if path and os.path.exists(path):
                os.remove(path)


class Progress:
    """One self-overwriting stderr line: images done / expected and the rate of this run; silent when quiet."""

    def __init__(self, split: str, total: int, quiet: bool) -> None:
        self.split, self.total, self.quiet = split, total, quiet
        self.done = self.written = 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1, written: bool = True) -> None:
        self.done += n
        self.written += n if written else 0
        now = time.monotonic()
        if not self.quiet and now - self.last >= 0.5:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = self.written / max(now - self.start, 1e-6)
        sys.stderr.write(f"\r{self.split}: {self.done:,}/{self.total:,} images, {rate:,.0f} images/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            self._draw(time.monotonic())
            sys.stderr.write("\n")


def prepare(source: ArchiveSource | KaggleSource | ParquetSource, sink: Sink, expect: Counts, quiet: bool) -> None:
    """Write every split not finished yet; whatever stops it, final names hold only whole files."""
    todo = [s for s in SPLITS if not sink.split_done(s)]
    for split in sorted(set(SPLITS) - set(todo)):
        print(f"{split}: already complete, skipped")
    source.check_inputs(todo)
    for split in todo:
        bar = Progress(split, expect.train if split == "train" else expect.val, quiet)
        sink.begin(split)
        try:
            for key, members in source.groups(split):
                if source.marks_groups and sink.group_done(split, key):
                    bar.advance(sink.group_size(split, key), written=False)
                    continue
                for m in members:
                    bar.advance(written=sink.write(split, m))
                if source.marks_groups:
                    sink.finish_group(split, key)
            sink.finish_split(split)
        except TAR_ERRORS as e:
            raise DataError(f"Reading {source.reading} failed ({e}): the archive is truncated or corrupt. Download it "
                            "again (image-net.org lists its md5) and rerun the same command; finished classes are "
                            "kept.") from None
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise DataError(f"The disk is full ({e}); free some space on {sink.out}'s disk and rerun the same "
                            "command to continue.") from None
        finally:
            sink.close()
            bar.close()


def count_output(out: str, zipped: bool) -> tuple[dict[str, collections.Counter], list[str]]:
    """Images per class name for each split present, and the zipped layout's label errors."""
    counts: dict[str, collections.Counter] = {}
    problems: list[str] = []
    classes: list[str] | None = None
    for split in SPLITS:
        if zipped and os.path.isfile(os.path.join(out, f"{split}_map.txt")):
            ZipMapDataset(out, split)  # every map entry is a readable member
            names, labels = read_map(os.path.join(out, f"{split}_map.txt"))
            wnids = [n.split("/", 1)[0] for n in names]
            classes = classes or sorted(set(wnids))
            index = {w: i for i, w in enumerate(classes)}
            wrong = [(n, lab) for n, w, lab in zip(names, wnids, labels) if index.get(w) != lab]
            if wrong:
                problems.append(f"{split}_map.txt: {len(wrong)} labels are not the sorted index of their class, "
                                f"e.g. {wrong[0][0]} -> {wrong[0][1]}")
            counts[split] = collections.Counter(wnids)
        elif not zipped and os.path.isdir(os.path.join(out, split)):
            folder = os.path.join(out, split)
            names = list_classes(folder)
            _, labels = scan_split(folder, names)
            counts[split] = collections.Counter({c: 0 for c in names})
            counts[split].update(names[lab] for lab in labels)
    return counts, problems


def check_output(out: str, expect: Counts, wnids: list[str] | None = None, zipped: bool | None = None) -> list[str]:
    """Print OUT's classes and image counts; return every difference from `expect` (and from `wnids`)."""
    if zipped is None:
        zipped = os.path.isfile(os.path.join(out, "train.zip"))
    counts, problems = count_output(out, zipped)
    print(f"check {out} ({'zipped' if zipped else 'folder'} layout):")
    for split, want in (("train", expect.train), ("val", expect.val)):
        n = sum(counts.get(split, {}).values())
        print(f"  {split}: {n:,} images in {len(counts.get(split, {}))} classes (expected {want:,})")
        if split not in counts:
            problems.append(f"the {split} split is missing in {out}")
        elif n != want:
            problems.append(f"{split} has {n:,} images, expected {want:,}")
    train, val = sorted(counts.get("train", {})), counts.get("val", collections.Counter())
    if len(train) != expect.classes:
        problems.append(f"train has {len(train)} classes, expected {expect.classes}")
    if wnids is not None and train != wnids:
        missing, extra = sorted(set(wnids) - set(train)), sorted(set(train) - set(wnids))
        problems.append(f"the class names differ from the source's wnids: missing {missing[:5]}, extra {extra[:5]}")
    if sorted(set(val) - set(train)):
        problems.append(f"val classes {sorted(set(val) - set(train))[:5]} are not train classes")
    if train and expect.classes and expect.val % expect.classes == 0:
        per = expect.val // expect.classes
        print(f"  val per class: {min(val[c] for c in train)} to {max(val[c] for c in train)} (expected {per})")
        off = [c for c in train if val[c] != per]
        if off:
            problems.append(f"{len(off)} classes do not have {per} val images, e.g. {off[0]} has {val[off[0]]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", help="folder holding the download (with --check-only and no OUT: the output to check)")
    parser.add_argument("out", nargs="?", help="output folder")
    parser.add_argument("--source", choices=("auto", "archives", "kaggle", "parquet"), default="auto",
                        help="what SRC holds (auto: official archives if present, else Kaggle's copy, else parquet "
                             "shards)")
    parser.add_argument("--zip", action="store_true", help="write train.zip, train_map.txt, val.zip, val_map.txt")
    parser.add_argument("--link", action="store_true", help="hard-link Kaggle's images instead of copying them")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument("--check-only", action="store_true", help="only check OUT (with SRC: its wnids too)")
    parser.add_argument("--expect-counts", nargs=3, type=int, metavar=("TRAIN", "VAL", "CLASSES"),
                        default=list(IMAGENET_COUNTS), help="expected images and classes (default: ImageNet-1k)")
    parser.add_argument("--min-free-mb", type=int, default=64, help="disk space to leave free on OUT's disk")
    args = parser.parse_args(argv)
    src, out = (None, args.src) if args.check_only and args.out is None else (args.src, args.out)
    if out is None:
        parser.error("give SRC and OUT (or --check-only OUT)")
    expect = Counts(*args.expect_counts)
    try:
        source = open_source(src, args.source) if src else None
        if not args.check_only:
            if args.link and (args.zip or isinstance(source, ArchiveSource)):
                raise DataError("--link hard-links Kaggle's images into the folder output; drop it for --zip or for "
                                "the archives.")
            os.makedirs(out, exist_ok=True)
            min_free = max(args.min_free_mb, 0) * 2**20
            sink = ZipSink(out, source.wnids, min_free) if args.zip else FolderSink(out, min_free, args.link)
            prepare(source, sink, expect, args.quiet)
        elif not os.path.isdir(out):
            raise DataError(f"{out} is not a folder; pass the output folder to check.")
        problems = check_output(out, expect, source.wnids if source else None,
                                args.zip if not args.check_only else (args.zip or None))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    for p in problems:
        print(f"check failed: {p}", file=sys.stderr)
    if problems:
        state = os.path.join(out, STATE_DIR)
        if os.path.isdir(state):  # so that a rerun looks at every class again (whole files are kept)
            shutil.rmtree(state)
        print(f"error: {out} is not a complete ImageNet copy (--expect-counts sets the expected numbers); mend the "
              "source and rerun the same command: it looks at every class again and keeps the files already whole",
              file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
