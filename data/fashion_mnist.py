"""Fashion-MNIST from its idx files (gzipped or not), held in memory as one uint8 array.

Files: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in DATA_PATH (or DATA_PATH/FashionMNIST/raw, the
torchvision layout), or in /usr/share/datasets/fashion-mnist when DATA_PATH is empty. The 28x28 gray
images become RGB PIL images and go through the same transforms as ImageNet.
"""
from __future__ import annotations

import gzip
import os
from typing import Callable

import numpy as np
from PIL import Image

from data.base import LabeledImageDataset
from data.errors import DataError
from data.fast import FastOptions

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FMNIST_LAYOUT = "DATA_PATH/{train,t10k}-images-idx3-ubyte[.gz] and {train,t10k}-labels-idx1-ubyte[.gz]"


def _find(root: str, stem: str) -> str:
    for d in (root, os.path.join(root, "FashionMNIST", "raw")):
        for name in (stem, stem + ".gz"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    raise DataError(f"{os.path.join(root, stem)}[.gz] is missing; expected {FMNIST_LAYOUT}.")


def read_idx(path: str) -> np.ndarray:
    """An idx file (unsigned byte data, any number of dimensions) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"Cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file (bad magic number).")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    n = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != n:
        raise DataError(f"{path} holds {data.size} bytes of data, its header says {dims} ({n}); the file is truncated.")
    return data.reshape(dims)


class FashionMNIST(LabeledImageDataset):
    """The training (60,000) or test (10,000, used as val) split."""

    num_classes = len(CLASSES)
    classes = list(CLASSES)

    def __init__(self, root: str, train: bool, transform: Callable | None = None, on_corrupt: str = "error",
                 fast: FastOptions = FastOptions()) -> None:
        super().__init__(transform, on_corrupt, fast)
        root = root or DEFAULT_ROOT
        if not os.path.isdir(root):
            kind = "is a file, not a folder" if os.path.exists(root) else "does not exist"
            raise DataError(f"Data path {root} {kind}; expected {FMNIST_LAYOUT}.")
        prefix = "train" if train else "t10k"
        self.images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        self._labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if self.images.ndim != 3 or len(self.images) != len(self._labels):
            raise DataError(f"Fashion-MNIST {prefix} files in {root} disagree: images {self.images.shape}, "
                            f"labels {self._labels.shape}.")
        if len(self._labels) == 0:
            raise DataError(f"Fashion-MNIST {prefix} files in {root} hold no images.")
        if self._labels.max() >= len(CLASSES):
            raise DataError(f"Fashion-MNIST {prefix} labels in {root} go up to {self._labels.max()}; expected 0..9.")
        self.root = root

    def name(self, index: int) -> str:
        return f"{self.root} fashion-mnist #{index}"

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")
