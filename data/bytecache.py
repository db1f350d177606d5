"""Encoded images held in memory (DATA.CACHE_MODE part/full of the zip and parquet layouts).

All bytes live in one numpy buffer with an offset table, so DataLoader workers forked from the main process share
its pages instead of copying them on every reference-count change (a dict of bytes objects would be copied).
"""
from __future__ import annotations

from typing import Iterable

import os

import numpy as np

from data.errors import DataError

CACHE_MODES = ("no", "part", "full")


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def ensure_fits(nbytes: int, what: str) -> None:
    """Raise one DataError when the LOCAL_WORLD_SIZE processes of this machine, each holding `nbytes`, would take
    more than 90% of the available memory."""
    free = available_memory()
    holders = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if free is not None and nbytes * holders > 0.9 * free:
        raise DataError(
            f"DATA.CACHE_MODE would hold {nbytes / 2**30:.1f} GiB of {what} in each of {holders} process(es) on this "
            f"machine, more than the {free / 2**30:.1f} GiB of memory available; set DATA.CACHE_MODE no (or part "
            "with more processes), or use more memory.")


def cached_indices(mode: str, n: int, rank: int, world_size: int) -> range:
    """The indices a rank holds: part = rank, rank + W, ... (the shard of ShardTrainSampler and of the strided
    evaluation sampler), full = every index, no = none."""
    return {"no": range(0), "part": range(rank, n, world_size), "full": range(n)}[mode]


class ByteCache:
    """Bytes of some of the indices 0..n-1, filled once from (index, bytes) pairs; `get` answers None for the rest."""

    def __init__(self, n: int, items: Iterable[tuple[int, bytes]] = ()) -> None:
        self._pos = np.full(n, -1, dtype=np.int64)
        chunks, sizes = [], [0]
        for index, data in items:
            self._pos[index] = len(chunks)
            chunks.append(np.frombuffer(data, dtype=np.uint8))
            sizes.append(len(data))
        self._buf = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
        self._off = np.cumsum(np.asarray(sizes, dtype=np.int64))

    def __len__(self) -> int:
        """How many images are held."""
        return len(self._off) - 1

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes

    def holds(self, index: int) -> bool:
        return bool(self._pos[index] >= 0)

    def get(self, index: int) -> bytes | None:
        p = int(self._pos[index])
        return None if p < 0 else self._buf[self._off[p]: self._off[p + 1]].tobytes()
