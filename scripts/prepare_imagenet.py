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
import errno
import logging
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.errors import DataError  # noqa: E402
from data.folder import list_classes, scan_split  # noqa: E402
from data.imagenet_sources import (SPLITS, TAR_ERRORS, ArchiveSource, KaggleSource, Member,  # noqa: E402
                                   ParquetSource, open_source)
from data.zipped import ZipMapDataset, read_map  # noqa: E402

log = logging.getLogger(__name__)

IMAGENET_COUNTS = (1_281_167, 50_000, 1_000)  # ILSVRC-2012: train images, val images, classes
STATE_DIR = ".prepare_imagenet"  # completion markers of the folder output
ZIP_TIMES = (315_532_800, 4_102_444_800)  # 1980-01-01 .. 2100-01-01, within what a zip entry's date can hold


@dataclass(frozen=True)
class Counts:
    train: int
    val: int
    classes: int


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
    except OSError as e:  # the output cannot be written (permissions, a failing disk): say which file
        print(f"error: {e.strerror or e} ({e.filename or out}); check that the output folder is writable and "
              "rerun the same command to continue.", file=sys.stderr)
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
