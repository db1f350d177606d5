"""ImageNet folder layout: ROOT/{train,val}/<class>/**/<image>; class indices in sorted folder order.

Paths and labels are held in numpy arrays rather than a list of tuples: DataLoader workers forked from
the main process then share the pages instead of copying them on every reference-count change.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

from data.base import LabeledImageDataset
from data.errors import DataError
from data.fast import FastOptions
from data.images import is_image_file

log = logging.getLogger(__name__)

FOLDER_LAYOUT = "DATA_PATH/train/<class>/<image> and DATA_PATH/val/<class>/<image> (e.g. train/n01440764/x.JPEG)"


def check_root(root: str, layout: str) -> None:
    """Raise one DataError when the data root is unset, missing or not a folder."""
    if not root:
        raise DataError(f"DATA.DATA_PATH is empty; pass --data-path pointing at {layout}.")
    if not os.path.exists(root):
        raise DataError(f"Data path {root} does not exist; expected {layout}.")
    if not os.path.isdir(root):
        raise DataError(f"Data path {root} is a file, not a folder; expected {layout}.")


def list_classes(split_dir: str) -> list[str]:
    """Sorted sub-folder names of a split folder (hidden folders ignored)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir(follow_symlinks=True) and not e.name.startswith("."))


def scan_split(split_dir: str, classes: list[str]) -> tuple[list[str], list[int]]:
    """Relative image paths and their class indices, sorted within each class (deterministic order)."""
    paths: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        cls_dir = os.path.join(split_dir, cls)
        if not os.path.isdir(cls_dir):
            continue
        found = []
        for dirpath, dirnames, filenames in os.walk(cls_dir, followlinks=True):
            dirnames.sort()
            rel = os.path.relpath(dirpath, split_dir)
            found.extend(os.path.join(rel, f) for f in sorted(filenames) if is_image_file(f))
        if not found:
            log.warning("Class folder %s holds no images (it keeps its class index %d)", cls_dir, label)
        paths.extend(found)
        labels.extend([label] * len(found))
    return paths, labels


class FolderDataset(LabeledImageDataset):
    """One split of the folder layout, decoded with `decode_rgb` (every image becomes 3-channel RGB)."""

    def __init__(self, root: str, split: str, transform: Callable | None = None, on_corrupt: str = "error",
                 fast: FastOptions = FastOptions()) -> None:
        super().__init__(transform, on_corrupt, fast)
        check_root(root, FOLDER_LAYOUT)
        self.split_dir = os.path.join(root, split)
        if not os.path.isdir(self.split_dir):
            raise DataError(f"Split folder {self.split_dir} is missing; expected {FOLDER_LAYOUT}.")
        self.classes = self._classes(root, split)
        paths, labels = scan_split(self.split_dir, self.classes)
        if not paths:
            raise DataError(
                f"No images ({', '.join(e.lstrip('.') for e in ('.jpg', '.jpeg', '.png'))}, ...) found under "
                f"{self.split_dir}; expected {FOLDER_LAYOUT}."
            )
        self._paths = np.array([p.encode() for p in paths])
        self._labels = np.asarray(labels, dtype=np.int64)

    def _classes(self, root: str, split: str) -> list[str]:
        """The training split defines the classes, so val indices line up with them even for an eval-only run."""
        own = list_classes(self.split_dir)
        train_dir = os.path.join(root, "train")
        if split == "train" or not os.path.isdir(train_dir):
            if not own:
                raise DataError(f"No class folders in {self.split_dir}; expected {FOLDER_LAYOUT}.")
            return own
        classes = list_classes(train_dir)
        extra = sorted(set(own) - set(classes))
        if extra:
            shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
            raise DataError(
                f"{len(extra)} class folder(s) in {self.split_dir} do not exist in {train_dir}: {shown}. "
                f"Both splits must use the training class folders; expected {FOLDER_LAYOUT}."
            )
        return classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def path(self, index: int) -> str:
        return os.path.join(self.split_dir, self._paths[index].decode())

    def name(self, index: int) -> str:
        return self.path(index)

    def source(self, index: int) -> str:
        return self.path(index)
