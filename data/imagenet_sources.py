"""What users download of ImageNet-1k, read as a stream of images to write (scripts/prepare_imagenet.py writes them).

Three sources, each with `wnids` (the class names, sorted: label i is wnids[i]), `check_inputs(splits)` (one clear
error before anything is written) and `groups(split)` yielding (key, images) per class tar, class folder or shard:
- ArchiveSource: the official ILSVRC2012 archives; the outer train tar is streamed and each inner per-class tar read
  from the stream, val labels come from the devkit (meta.mat maps ILSVRC2012_ID to wnid, the ground truth gives the
  ID of each val image in file order). Archives are untrusted: absolute paths, '..', links and any non-regular member
  are refused (`regular_member`).
- KaggleSource: Kaggle's ILSVRC/Data/CLS-LOC tree with LOC_val_solution.csv and LOC_synset_mapping.txt.
- ParquetSource: the Hugging Face Hub's shards (data/parquet.py reads them in place).
"""
from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

from data.errors import DataError
from data.folder import list_classes
from data.images import is_image_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
ARCHIVES = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar",
            "devkit": "ILSVRC2012_devkit_t12.tar.gz"}
DEVKIT_META, DEVKIT_GT = "data/meta.mat", "data/ILSVRC2012_validation_ground_truth.txt"
KAGGLE_DIR, KAGGLE_VAL_CSV, KAGGLE_SYNSETS = "ILSVRC/Data/CLS-LOC", "LOC_val_solution.csv", "LOC_synset_mapping.txt"
WNID = re.compile(r"n\d{8}")
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)  # what a truncated or corrupt archive raises


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
    """The member's file name when it is an image to keep, else '' (with a warning). A name the map files cannot
    hold (a tab, a line break, '@') stops the run before anything of it is written."""
    base = posixpath.basename(name)
    if any(c in base for c in "\t\r\n@"):
        raise DataError(f"{origin}: member {name!r} has a tab, line break or '@' in its name, which the zip layout's "
                        "map files cannot hold; the archive is not an official one.")
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
            raise DataError(f"{label} holds {n} images, the devkit lists {expected} for {wnid}: the archive is "
                            "damaged; download it again and rerun the same command (finished classes are kept).")

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
                raise DataError(f"{path} row {row} has label {label}, outside 0..{len(self.wnids) - 1}: a split "
                                "without labels (such as test) cannot be prepared.")
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
