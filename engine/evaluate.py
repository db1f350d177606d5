"""Exact top-1 / top-5 accuracy and loss over the whole validation set.

Each rank counts correct predictions and sums the loss over its shard (the validation sampler gives every
image to exactly one rank, with no padding); the counts are summed across ranks, never averaged per rank,
so the result is the same for any number of processes. The official release averages per-batch
percentages per rank, which is wrong when shards or batches differ in size.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from engine.amp import AmpPolicy
from engine.distributed import all_reduce_sum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Validation counts summed over every rank."""

    loss: float  # mean cross-entropy per image
    correct1: int
    correct5: int
    num_images: int

    @property
    def top1_acc(self) -> float:
        return 100.0 * self.correct1 / self.num_images if self.num_images else float("nan")

    @property
    def top5_acc(self) -> float:
        return 100.0 * self.correct5 / self.num_images if self.num_images else float("nan")

    @property
    def top1_err(self) -> float:
        return 100.0 - self.top1_acc

    @property
    def top5_err(self) -> float:
        return 100.0 - self.top5_acc

    def as_dict(self) -> dict:
        """Counts and percentages, for logs and reports."""
        return {
            "loss": self.loss, "correct1": self.correct1, "correct5": self.correct5, "num_images": self.num_images,
            "top1_acc": self.top1_acc, "top1_err": self.top1_err, "top5_acc": self.top5_acc, "top5_err": self.top5_err,
        }


def _batches_on_every_rank(loader: Iterable) -> int:
    """How many batches every rank's share of the validation set has (0 when the loader cannot tell)."""
    fewest = getattr(getattr(loader, "sampler", None), "fewest", None)
    batch_size = getattr(loader, "batch_size", None)
    return math.ceil(fewest() / batch_size) if fewest is not None and batch_size else 0


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters (or, without any, its buffers) live."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Iterable, amp: AmpPolicy, print_freq: int = 0, prepare: Callable | None = None,
    stop: Callable[[], int] | None = None,
) -> EvalResult | None:
    """Loss, top-1 and top-5 counts of `model` over `loader` on every rank, summed across ranks, on the model's
    device. `prepare` (Loaders.val_prepare) turns each image batch into the model's input once it is there.

    `stop` (StopRequest.agreed, a collective) is asked after each of the batches that every rank has; when a rank
    got a stop signal, evaluation ends there on every rank and None is returned, so a preempted job does not wait
    for the whole validation set."""
    was_training, device = model.training, device_of(model)
    model.eval()
    checks = _batches_on_every_rank(loader) if stop is not None else 0
    # float64 sums: exact integer counts up to 2**53 images, and a loss sum that does not drift.
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, correct1, correct5, images
    start = time.perf_counter()
    for idx, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if prepare is not None:
            images = prepare(images)
        with amp.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        totals[0] += F.cross_entropy(logits, targets, reduction="sum").double()
        totals[1] += hits[:, :1].sum()
        totals[2] += hits.sum()
        totals[3] += targets.numel()
        if print_freq and idx % print_freq == 0:
            log.info("Test: [%d/%d] %.3fs", idx, len(loader), time.perf_counter() - start)
        if idx < checks and stop():
            model.train(was_training)
            return None
    all_reduce_sum(totals)
    loss_sum, c1, c5, n = totals.tolist()
    model.train(was_training)
    return EvalResult(loss=loss_sum / n if n else float("nan"), correct1=int(c1), correct5=int(c5), num_images=int(n))
