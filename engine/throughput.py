"""Inference throughput (THROUGHPUT_MODE), measured like the official release: one validation batch, warm-up
passes, then timed passes between two device synchronizations."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from engine.amp import AmpPolicy
from engine.distributed import synchronize
from engine.evaluate import device_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Throughput:
    img_per_s: float
    batch_size: int
    device: str
    dtype: str
    iterations: int


@torch.no_grad()
def measure_throughput(
    model: nn.Module, loader: Iterable, amp: AmpPolicy, warmup: int = 50, iterations: int = 30,
    prepare: Callable | None = None,
) -> Throughput:
    """Images per second of `model` on the first batch of `loader` (forward only, on the model's device, AMP as
    configured); `prepare` (Loaders.val_prepare) turns the batch into the model's input on the device."""
    device = device_of(model)
    images = next(iter(loader))[0].to(device, non_blocking=True)
    if prepare is not None:
        images = prepare(images)
    model.eval()
    with amp.autocast():
        for _ in range(warmup):
            model(images)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(iterations):
            model(images)
        synchronize(device)
    seconds = time.perf_counter() - start
    result = Throughput(iterations * images.shape[0] / seconds, images.shape[0], str(device), amp.dtype_name, iterations)
    log.info("throughput %.1f img/s (batch %d, %s, %s, averaged over %d passes after %d warm-up)",
             result.img_per_s, result.batch_size, result.device, result.dtype, iterations, warmup)
    return result
