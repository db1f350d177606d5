"""Samplers: distributed training, repeated augmentation (DeiT), fixed shards (zip part-cache), exact eval.

Training samplers yield `(index, seed)` pairs: `seed` drives that sample's augmentation (see data/base.py)
and is a pure function of (SEED, epoch, rank, position), so augmentations do not depend on NUM_WORKERS
and a run resumed at an epoch boundary -- or mid-epoch via `set_epoch(epoch, start_index=k)` -- sees
exactly the samples and augmentations of an uninterrupted run. Call `set_epoch` before every epoch.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def sample_seeds(seed: int, epoch: int, rank: int, n: int) -> np.ndarray:
    """n augmentation seeds for positions 0..n-1 of `rank`'s stream in `epoch`."""
    return np.random.default_rng([seed, epoch, rank, 0x5EED]).integers(0, 2**62, size=n, dtype=np.int64)


def _epoch_perm(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation torch's DistributedSampler uses for (seed, epoch): identical on every rank."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g)


class _TrainSampler(Sampler):
    """Shared logic: epoch/start bookkeeping and (index, seed) pairs. Subclasses give `_indices()`."""

    def __init__(self, num_items: int, world_size: int, rank: int, seed: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_items, self.world_size, self.rank, self.seed = num_items, world_size, rank, seed
        self.epoch, self.start_index = 0, 0
        self.num_samples = 0  # samples per rank per full epoch; set by subclasses

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """Select the epoch; `start_index` skips the first k samples of this rank (mid-epoch resume)."""
        if not 0 <= start_index <= self.num_samples:
            raise ValueError(f"start_index {start_index} outside 0..{self.num_samples}")
        self.epoch, self.start_index = epoch, start_index

    def _indices(self) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.num_samples - self.start_index

    def __iter__(self) -> Iterator[tuple[int, int]]:
        idx = self._indices()
        assert len(idx) == self.num_samples
        seeds = sample_seeds(self.seed, self.epoch, self.rank, self.num_samples)
        k = self.start_index
        return iter(zip(idx[k:].tolist(), seeds[k:].tolist()))


class DistributedTrainSampler(_TrainSampler):
    """torch DistributedSampler(shuffle=True, seed=SEED) order (padded to equal shares), plus seeds."""

    def __init__(self, num_items: int, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(num_items, world_size, rank, seed)
        self.num_samples = math.ceil(num_items / world_size)
        self.total_size = self.num_samples * world_size

    def _indices(self) -> np.ndarray:
        idx = _epoch_perm(self.num_items, self.seed, self.epoch).numpy()
        if self.total_size > len(idx):
            idx = np.concatenate([idx, np.resize(idx, self.total_size - len(idx))])
        return idx[self.rank : self.total_size : self.world_size]


class RASampler(_TrainSampler):
    """DeiT's repeated augmentation: each index `repeats` times in the stream, the copies on different ranks.

    As in DeiT, each rank stops after floor(N / 256) * 256 / world_size samples, so an epoch has about as
    many samples as the data set. `num_selected` overrides that (e.g. the full stream for tests).
    """

    def __init__(self, num_items: int, world_size: int = 1, rank: int = 0, seed: int = 0, repeats: int = 3,
                 num_selected: int | None = None) -> None:
        super().__init__(num_items, world_size, rank, seed)
        if repeats < 1:
            raise ValueError(f"AUG.REPEATED_AUG_REPEATS must be >= 1, got {repeats}")
        self.repeats = repeats
        self.stream_per_rank = math.ceil(num_items * repeats / world_size)
        self.total_size = self.stream_per_rank * world_size
        if num_selected is None:
            num_selected = int(math.floor(num_items // 256 * 256 / world_size))
            if num_selected == 0:  # DeiT's rule selects nothing below 256 images; keep one data set's worth
                num_selected = max(1, num_items // world_size)
                log.warning("Repeated augmentation on %d images (< 256): using %d samples per rank per epoch",
                            num_items, num_selected, extra={"once_per_job": True})
        self.num_samples = min(num_selected, self.stream_per_rank)

    def _indices(self) -> np.ndarray:
        idx = np.repeat(_epoch_perm(self.num_items, self.seed, self.epoch).numpy(), self.repeats)
        if self.total_size > len(idx):
            idx = np.concatenate([idx, idx[: self.total_size - len(idx)]])
        return idx[self.rank : self.total_size : self.world_size][: self.num_samples]


class ShardTrainSampler(_TrainSampler):
    """A fixed shard per rank (indices rank, rank + W, ..., or the given `shards`), shuffled within each epoch.

    Used with the part-caches, where each rank holds only its shard's bytes (as in the official release; the parquet
    layout's shards are whole row groups, data/parquet.py). Every rank takes as many samples per epoch as the smallest
    shard holds (N // W for the strided ones), so all ranks run the same number of steps (the official
    SubsetRandomSampler can differ by one sample and hang DDP).
    """

    def __init__(self, num_items: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shards: list[np.ndarray] | None = None) -> None:
        super().__init__(num_items, world_size, rank, seed)
        self.shard = np.arange(rank, num_items, world_size) if shards is None else np.asarray(shards[rank])
        self.num_samples = num_items // world_size if shards is None else min(len(s) for s in shards)
        if self.num_samples == 0:
            raise ValueError(f"{num_items} images cannot be sharded over {world_size} ranks")

    def _indices(self) -> np.ndarray:
        shard = self.shard
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(shard), generator=g).numpy()
        return shard[order][: self.num_samples]


class ExactEvalSampler(Sampler):
    """Indices rank, rank + W, ...: every image on exactly one rank, no padding, no duplicates."""

    def __init__(self, num_items: int, world_size: int = 1, rank: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.num_items, self.world_size, self.rank = num_items, world_size, rank

    def set_epoch(self, epoch: int) -> None:
        """Evaluation order does not depend on the epoch; kept for a uniform sampler interface."""

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))

    def fewest(self) -> int:
        """The indices of the rank that gets the fewest (the last one): as many as every rank has."""
        return len(range(self.world_size - 1, self.num_items, self.world_size))
