"""What every image data set shares: per-sample augmentation seeds, corrupt-image policy and counter.

Determinism: training samplers yield `(index, seed)` pairs. While transforming such a sample, the CPU RNGs
that augmentations draw from (python `random`, numpy, torch) are seeded from `seed` (and restored afterwards
in the main process), so a sample's augmentation is a pure function of (SEED, epoch, rank, position in the
epoch) -- independent of NUM_WORKERS, persistent workers and of resuming. Plain integer indices use the ambient
RNG.

Corrupt images: with on_corrupt="error" the first unreadable file raises CorruptImageError naming it; with
"skip" it is logged, replaced by the next readable index (deterministic) and counted in a shared-memory
tensor with one slot per worker process, so counts from DataLoader workers reach the main process without
locks. `corrupt_count()` returns the total since construction (or `reset_corrupt_count()`).
"""
from __future__ import annotations

import logging
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, get_worker_info

from data.errors import CorruptImageError, DataError
from data.fast import FastOptions, FastPipeline
from data.images import decode_rgb

log = logging.getLogger(__name__)

_COUNTER_SLOTS = 256  # slot 0: main process; slot 1 + worker_id: DataLoader workers
_MAX_CONSECUTIVE_CORRUPT = 64


@contextmanager
def preserved_rngs() -> Iterator[None]:
    """Restore the python/numpy/torch CPU RNG states after the block, in the main process.

    DataLoader workers use these RNGs for nothing else, so they skip the save/restore (numpy's alone costs
    ~0.2 ms, more than transforming a small image).
    """
    if get_worker_info() is not None:
        yield
        return
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


def seed_rngs(seed: int) -> None:
    """Seed the python/numpy/torch CPU RNGs that augmentations draw from (torch.manual_seed would also reseed
    the CUDA generators)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)


def seeded_map(fn: Callable[[int], Any], pairs: list[tuple[int, int]]) -> list[Any]:
    """[fn(index) for (index, seed) in pairs], each call with the CPU RNGs seeded from its seed; in the main
    process the RNG states are saved and restored once for the whole list instead of once per call."""
    out = []
    with preserved_rngs():
        for index, seed in pairs:
            seed_rngs(seed)
            out.append(fn(index))
    return out


@contextmanager
def seeded_rngs(seed: int | None) -> Iterator[None]:
    """Seed python/numpy/torch CPU RNGs from `seed` inside the block; in the main process (NUM_WORKERS 0)
    their states are restored afterwards, so training randomness is untouched. None: leave them alone."""
    if seed is None:
        yield
        return
    with preserved_rngs():
        seed_rngs(seed)
        yield


def split_item(item: Any) -> tuple[int, int | None]:
    """A sampler item -> (index, augmentation seed or None)."""
    if isinstance(item, (tuple, list)):
        return int(item[0]), int(item[1])
    return int(item), None


class CorruptCounter:
    """A per-process-slot counter in shared memory, readable from the main process."""

    def __init__(self) -> None:
        self._slots = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    def add(self) -> None:
        info = get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)
        self._slots[slot] += 1

    def total(self) -> int:
        return int(self._slots.sum())

    def reset(self) -> None:
        self._slots.zero_()


class ImageDataset(Dataset):
    """Base class: subclasses implement __len__, `target(index)`, `name(index)` and either `source(index)`
    (the encoded file: a path or bytes) or `load(index)` (an RGB PIL image, for in-memory data).

    With a transform, encoded images go through `FastPipeline` (data/fast.py): the same results as
    decode + transform, cheaper; `fast` (`FastOptions`) picks the approximate training speed-ups and the uint8
    output (normalization on the device).
    """

    max_consecutive_corrupt = _MAX_CONSECUTIVE_CORRUPT  # unreadable neighbours skipped before giving up

    def __init__(self, transform: Callable | None, on_corrupt: str = "error",
                 fast: FastOptions = FastOptions()) -> None:
        if on_corrupt not in ("error", "skip"):
            raise DataError(f"DATA.ON_CORRUPT is {on_corrupt!r}; choose error or skip.")
        self.transform = transform
        self.on_corrupt = on_corrupt
        self._corrupt = CorruptCounter()
        self.fast = FastPipeline(transform, fast) if transform is not None else None

    # -- to implement -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def source(self, index: int) -> str | bytes | None:
        """The encoded image (path or bytes), or None when `load` must be used."""
        return None

    def load(self, index: int) -> Image.Image:
        """The decoded RGB image; raises CorruptImageError naming the file."""
        return decode_rgb(self.source(index), self.name(index))

    def target(self, index: int) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------
    def device_part(self) -> Callable | None:
        """What the engine applies to each batch once it is on the device (FastOptions.uint8), or None."""
        return self.fast.device_part() if self.fast is not None else None

    @property
    def targets(self) -> list[int]:
        return [self.target(i) for i in range(len(self))]

    def corrupt_count(self) -> int:
        """Corrupt images met (and skipped) by this data set in every process since the last reset."""
        return self._corrupt.total()

    def reset_corrupt_count(self) -> None:
        self._corrupt.reset()

    def _sample(self, index: int) -> Any:
        if self.fast is not None:
            src = self.source(index)
            if src is not None:
                return self.fast(src, self.name(index))
        img = self.load(index)
        return self.fast.from_image(img) if self.fast is not None else img

    def _sample_or_skip(self, index: int) -> tuple[Any, int]:
        n, limit = len(self), self.max_consecutive_corrupt
        for attempt in range(min(n, limit)):
            i = (index + attempt) % n
            try:
                return self._sample(i), i
            except CorruptImageError as e:
                if self.on_corrupt == "error":
                    raise CorruptImageError(
                        f"{e}. Fix or remove the file (scripts/check_data.py lists every unreadable one), "
                        "or set DATA.ON_CORRUPT skip."
                    ) from None
                self._corrupt.add()
                log.warning("Skipping corrupt image %s (replaced by the next index)", self.name(i))
        raise DataError(
            f"{min(n, limit)} consecutive images starting at {self.name(index)} are unreadable; "
            "check the data set with scripts/check_data.py."
        )

    def _labeled(self, index: int) -> tuple[Any, int]:
        x, used = self._sample_or_skip(index)
        return x, self.target(used)

    def __getitem__(self, item: Any) -> tuple[Any, int]:
        index, seed = split_item(item)
        with seeded_rngs(seed):  # covers the crop drawn before decoding, too
            return self._labeled(index)

    def __getitems__(self, items: list) -> list[tuple[Any, int]]:
        """A whole batch (the DataLoader's batched fetch), equal to [self[i] for i in items]; the RNG states
        are saved and restored once per batch instead of once per image."""
        pairs = [split_item(item) for item in items]
        if any(seed is None for _, seed in pairs):
            return [self[item] for item in items]
        return seeded_map(self._labeled, pairs)


class LabeledImageDataset(ImageDataset):
    """An ImageDataset whose labels are one int64 array `self._labels`, set by the subclass's __init__."""

    _labels: np.ndarray

    def __len__(self) -> int:
        return len(self._labels)

    def target(self, index: int) -> int:
        return int(self._labels[index])

    @property
    def targets(self) -> list[int]:
        return self._labels.tolist()
