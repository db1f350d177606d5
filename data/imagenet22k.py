"""ImageNet-22K (fall 2011) through the official split files under DATA_PATH:
ILSVRC2011fall_whole_map_train.txt / ILSVRC2011fall_whole_map_val.txt.

The official files are JSON lists of [relative/path, label] (paths relative to DATA_PATH, e.g.
"fall11_whole/n00004475/n00004475_54295.JPEG"); plain "path<TAB>label" lines are accepted too.
21,841 classes, as in the official release (21,843 synsets, two of them without images).
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from data.base import LabeledImageDataset
from data.errors import DataError
from data.fast import FastOptions
from data.folder import check_root
from data.zipped import read_map

IN22K_CLASSES = 21841
IN22K_MAPS = {"train": "ILSVRC2011fall_whole_map_train.txt", "val": "ILSVRC2011fall_whole_map_val.txt"}
IN22K_LAYOUT = ("DATA_PATH/ILSVRC2011fall_whole_map_{train,val}.txt (JSON [[path, label], ...] with paths "
                "relative to DATA_PATH) and the images, e.g. DATA_PATH/fall11_whole/<wnid>/<image>")


def read_22k_map(path: str) -> tuple[list[str], list[int]]:
    """[(path, label)] from the official JSON map, or from 'path<TAB>label' lines."""
    with open(path, encoding="utf-8") as f:
        head = f.read(1)
    if head != "[":
        return read_map(path)
    with open(path, encoding="utf-8") as f:
        try:
            items = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} is not valid JSON ({e}); expected {IN22K_LAYOUT}.") from None
    try:
        return [str(it[0]) for it in items], [int(it[1]) for it in items]
    except (TypeError, ValueError, IndexError):
        raise DataError(f"{path} must be a JSON list of [path, label] pairs; expected {IN22K_LAYOUT}.") from None


class IN22KDataset(LabeledImageDataset):
    """One split of ImageNet-22K as listed in the official map file."""

    num_classes = IN22K_CLASSES

    def __init__(self, root: str, split: str, transform: Callable | None = None, on_corrupt: str = "error",
                 fast: FastOptions = FastOptions()) -> None:
        super().__init__(transform, on_corrupt, fast)
        check_root(root, IN22K_LAYOUT)
        self.root = root
        map_path = os.path.join(root, IN22K_MAPS[split])
        if not os.path.isfile(map_path):
            raise DataError(f"{map_path} is missing; expected {IN22K_LAYOUT}.")
        paths, labels = read_22k_map(map_path)
        if not paths:
            raise DataError(f"{map_path} lists no images; expected {IN22K_LAYOUT}.")
        lo, hi = min(labels), max(labels)
        if lo < 0 or hi >= IN22K_CLASSES:
            bad = lo if lo < 0 else hi
            raise DataError(f"{map_path} has label {bad}; ImageNet-22K labels are 0..{IN22K_CLASSES - 1}.")
        self._paths = np.array([p.lstrip("/").encode() for p in paths])
        self._labels = np.asarray(labels, dtype=np.int64)

    def name(self, index: int) -> str:
        return os.path.join(self.root, self._paths[index].decode())

    def source(self, index: int) -> str:
        return self.name(index)
