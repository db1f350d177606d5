"""Random images made as normalized tensors (no decode): for smoke tests, benchmarks and CI.

Each class has a fixed coarse 4x4 colour pattern; an image is its class pattern (upsampled) plus unit
Gaussian noise, so a model can learn the task and training curves are meaningful. Everything comes from
fixed generators: the same index always gives the same image and label, whatever SEED or the worker.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.base import split_item


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


class SyntheticDataset(Dataset):
    """`size` images of shape 3 x img_size x img_size in `num_classes` classes; split 0 = train, 1 = val."""

    def __init__(self, size: int, num_classes: int, img_size: int, split: int) -> None:
        self.size, self.num_classes, self.img_size, self.split = size, num_classes, img_size, split

    def __len__(self) -> int:
        return self.size

    def target(self, index: int) -> int:
        return int(torch.randint(self.num_classes, (), generator=_generator(7, self.split, index, 1)))

    @property
    def targets(self) -> list[int]:
        return [self.target(i) for i in range(self.size)]

    def corrupt_count(self) -> int:
        return 0

    def reset_corrupt_count(self) -> None:
        pass

    def __getitem__(self, item: Any) -> tuple[torch.Tensor, int]:
        index, _ = split_item(item)
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} synthetic images")
        label = self.target(index)
        pattern = torch.randn(1, 3, 4, 4, generator=_generator(7, 2, label))
        pattern = F.interpolate(pattern, size=(self.img_size, self.img_size), mode="nearest")[0]
        noise = torch.randn(3, self.img_size, self.img_size, generator=_generator(7, self.split, index, 0))
        return pattern + noise, label
