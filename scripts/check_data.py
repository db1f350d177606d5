"""Decode every image of a data set once: counts per class and every unreadable file.

    python scripts/check_data.py PATH [--workers N] [--json report.json]

PATH may be an ImageNet folder layout (train/ and val/), the zipped layout (train.zip + train_map.txt ...),
parquet shards (data/train-*.parquet, data/validation-*.parquet ...), an ImageNet-22K root (ILSVRC2011fall_whole_map_*.txt) or a single split folder of class sub-folders.
Exit status 1 when any image is unreadable, 2 when the layout itself is unusable, 0 otherwise.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch.utils.data import DataLoader, Dataset  # noqa: E402

from data.errors import CorruptImageError, DataError  # noqa: E402
from data.folder import FOLDER_LAYOUT, FolderDataset, check_root  # noqa: E402
from data.imagenet22k import IN22K_MAPS, IN22KDataset  # noqa: E402
from data.parquet import ParquetDataset, find_shards  # noqa: E402
from data.zipped import ZipMapDataset  # noqa: E402


class _Probe(Dataset):
    """Decode one image; report (index, error message or '') instead of raising."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[int, str]:
        try:
            self.ds.load(i)
            return i, ""
        except CorruptImageError as e:
            return i, str(e)


def _first(batch: list) -> tuple[int, str]:
    return batch[0]


def open_splits(path: str) -> list[tuple[str, object]]:
    """(split name, data set) for every split found under `path`."""
    check_root(path, FOLDER_LAYOUT + ", the zipped layout, parquet shards or an ImageNet-22K root")
    if any(os.path.isfile(os.path.join(path, f"{s}.zip")) for s in ("train", "val")):
        return [(s, ZipMapDataset(path, s)) for s in ("train", "val") if os.path.isfile(os.path.join(path, f"{s}.zip"))]
    shards = [s for s in ("train", "val") if find_shards(path, s)]
    if shards:
        return [(s, ParquetDataset(path, s, cache_mode="no")) for s in shards]
    if any(os.path.isfile(os.path.join(path, f)) for f in IN22K_MAPS.values()):
        return [(s, IN22KDataset(path, s)) for s, f in IN22K_MAPS.items() if os.path.isfile(os.path.join(path, f))]
    splits = [s for s in ("train", "val") if os.path.isdir(os.path.join(path, s))]
    if splits:
        return [(s, FolderDataset(path, s)) for s in splits]
    parent, name = os.path.split(os.path.abspath(path))
    return [(name, FolderDataset(parent, name))]  # a single split folder of class sub-folders


def check(ds, workers: int) -> tuple[collections.Counter, list[str]]:
    counts: collections.Counter = collections.Counter()
    bad: list[str] = []
    loader = DataLoader(_Probe(ds), batch_size=1, num_workers=workers, collate_fn=_first)
    for i, err in loader:
        counts[ds.target(i)] += 1
        if err:
            bad.append(err)
            print(f"UNREADABLE {err}", flush=True)
    return counts, bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decode processes")
    parser.add_argument("--json", default="", help="also write the counts and unreadable files here")
    args = parser.parse_args(argv)
    try:
        splits = open_splits(args.path)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report, n_bad = {}, 0
    for name, ds in splits:
        counts, bad = check(ds, args.workers)
        names = getattr(ds, "classes", None)
        per_class = {(names[c] if names else str(c)): counts[c] for c in sorted(counts)}
        print(f"{name}: {len(ds)} images, {len(counts)} classes with images, {len(bad)} unreadable")
        for cls, n in per_class.items():
            print(f"  {cls}\t{n}")
        report[name] = {"images": len(ds), "per_class": per_class, "unreadable": bad}
        n_bad += len(bad)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
