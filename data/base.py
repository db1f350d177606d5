"""What every image data set shares: per-sample augmentation seeds, corrupt-image policy and counter.

Determinism: training samplers yield `(index, seed)` pairs. While transforming such a sample, the CPU RNGs
that augmentations draw from (python `random`, numpy, torch) are seeded from `seed` and restored afterwards,
so a sample's augmentation is a pure function of (SEED, epoch, rank, position in the epoch) -- independent
of NUM_WORKERS, persistent workers and of resuming. Plain integer indices use the ambient RNG.

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

log = logging.getLogger(__name__)

_COUNTER_SLOTS = 256  # slot 0: main process; slot 1 + worker_id: DataLoader workers
_MAX_CONSECUTIVE_CORRUPT = 64


@contextmanager
def seeded_rngs(seed: int | None) -> Iterator[None]:
    """Seed python/numpy/torch CPU RNGs from `seed` inside the block and restore their states after it.

    Only the CPU generator is touched (torch.manual_seed would also reseed CUDA generators).
    """
    if seed is None:
        yield
        return
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


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
    """Base class: subclasses implement __len__, `load(index) -> RGB PIL image`, `target(index)`, `name(index)`."""

    def __init__(self, transform: Callable | None, on_corrupt: str = "error") -> None:
        if on_corrupt not in ("error", "skip"):
            raise DataError(f"DATA.ON_CORRUPT is {on_corrupt!r}; choose error or skip.")
        self.transform = transform
        self.on_corrupt = on_corrupt
        self._corrupt = CorruptCounter()
        # JPEG draft-mode target (PIL Image.draft); None decodes at full size. See data/fast.py.
        self.draft_size: tuple[int, int] | None = None

    # -- to implement -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def target(self, index: int) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------------
    @property
    def targets(self) -> list[int]:
        return [self.target(i) for i in range(len(self))]

    def corrupt_count(self) -> int:
        """Corrupt images met (and skipped) by this data set in every process since the last reset."""
        return self._corrupt.total()

    def reset_corrupt_count(self) -> None:
        self._corrupt.reset()

    def _load_or_skip(self, index: int) -> tuple[Image.Image, int]:
        n = len(self)
        for attempt in range(min(n, _MAX_CONSECUTIVE_CORRUPT)):
            i = (index + attempt) % n
            try:
                return self.load(i), i
            except CorruptImageError as e:
                if self.on_corrupt == "error":
                    raise CorruptImageError(
                        f"{e}. Fix or remove the file (scripts/check_data.py lists every unreadable one), "
                        "or set DATA.ON_CORRUPT skip."
                    ) from None
                self._corrupt.add()
                log.warning("Skipping corrupt image %s (replaced by the next index)", self.name(i))
        raise DataError(
            f"{min(n, _MAX_CONSECUTIVE_CORRUPT)} consecutive images starting at {self.name(index)} are unreadable; "
            "check the data set with scripts/check_data.py."
        )

    def __getitem__(self, item: Any) -> tuple[Any, int]:
        index, seed = split_item(item)
        img, used = self._load_or_skip(index)
        with seeded_rngs(seed):
            x = self.transform(img) if self.transform is not None else img
        return x, self.target(used)
