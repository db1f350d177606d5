"""Pack an ImageNet folder layout into the official zipped layout.

    python scripts/make_zip.py SRC_DIR DST_DIR

SRC_DIR/{train,val}/<class>/<image> -> DST_DIR/{train,val}.zip (stored, no recompression of JPEGs) and
DST_DIR/{train,val}_map.txt with lines "<class>/<image><TAB><label>", labels in sorted training-class
order (the same indices the folder layout gives). Read them with DATA.ZIP_MODE True (--zip).
"""
from __future__ import annotations

import argparse
import os
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.errors import DataError  # noqa: E402
from data.folder import FOLDER_LAYOUT, check_root, list_classes, scan_split  # noqa: E402


def pack_split(src_split: str, classes: list[str], zip_path: str, map_path: str) -> int:
    """Write one split's zip and map file (both via a temporary name, renamed when complete)."""
    paths, labels = scan_split(src_split, classes)
    if not paths:
        raise DataError(f"No images under {src_split}; expected {FOLDER_LAYOUT}.")
    with zipfile.ZipFile(zip_path + ".tmp", "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for rel in paths:
            zf.write(os.path.join(src_split, rel), arcname=rel.replace(os.sep, "/"))
    with open(map_path + ".tmp", "w", encoding="utf-8") as f:
        for rel, label in zip(paths, labels):
            f.write(f"{rel.replace(os.sep, '/')}\t{label}\n")
    os.replace(zip_path + ".tmp", zip_path)
    os.replace(map_path + ".tmp", map_path)
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("src", help="ImageNet folder layout root (holding train/ and val/)")
    parser.add_argument("dst", help="output folder for train.zip, train_map.txt, val.zip, val_map.txt")
    args = parser.parse_args(argv)
    try:
        check_root(args.src, FOLDER_LAYOUT)
        train_dir = os.path.join(args.src, "train")
        if not os.path.isdir(train_dir):
            raise DataError(f"{train_dir} is missing; expected {FOLDER_LAYOUT}.")
        classes = list_classes(train_dir)
        os.makedirs(args.dst, exist_ok=True)
        for split in ("train", "val"):
            src_split = os.path.join(args.src, split)
            if not os.path.isdir(src_split):
                print(f"skipping {split}: {src_split} does not exist")
                continue
            extra = sorted(set(list_classes(src_split)) - set(classes))
            if extra:
                raise DataError(f"Class folders {extra[:5]} in {src_split} are not in {train_dir}.")
            n = pack_split(src_split, classes, os.path.join(args.dst, f"{split}.zip"),
                           os.path.join(args.dst, f"{split}_map.txt"))
            print(f"{split}: {n} images in {len(classes)} classes -> {os.path.join(args.dst, split + '.zip')}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
