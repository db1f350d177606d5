"""One training epoch: autocast, gradient accumulation (DDP no_sync), clipping, skip of non-finite updates,
the learning rate per update, and the EMA update.

Nothing is read back to the host between log lines: losses, the gradient norm and the count of skipped
updates stay on the device until a PRINT_FREQ line (or the end of the epoch) reads them in one go. A
non-finite update is skipped on the device: fused optimizers take a `found_inf` flag (as GradScaler uses)
and leave weights, moments and step counts untouched when it is set.

Preemption: after every optimizer update (never between the micro-batches of an accumulation group) the loop
asks `ctx.stop()` whether any rank got a stop signal; if so it returns with `TrainState.epoch_batches` telling
how far into the epoch it got, and a later call continues from there (`set_epoch(epoch, start_index=...)`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable

import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

from engine.amp import AmpPolicy
from engine.distributed import all_reduce_sum
from engine.ema import ema_update
from engine.logging_utils import MetricsWriter, format_seconds, peak_memory_mb
from engine.optim import LRSchedule, set_lr, steps_per_epoch

log = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient norm."""


def build_criterion(cfg: CfgNode, mixup: bool) -> nn.Module:
    """The training loss: soft-target CE under mixup/cutmix (which smooths labels itself), else label
    smoothing CE when MODEL.LABEL_SMOOTHING > 0, else plain CE."""
    if mixup:
        return SoftTargetCrossEntropy()
    if cfg.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.MODEL.LABEL_SMOOTHING)
    return nn.CrossEntropyLoss()


@dataclass
class TrainContext:
    """Everything train_one_epoch needs besides the model and the data."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    criterion: nn.Module
    amp: AmpPolicy
    device: torch.device
    ema_source: nn.Module | None = None  # the unwrapped model the EMA follows
    accumulation_steps: int = 1
    clip_grad: float | None = None  # 0 or None: no clipping (the norm is still measured)
    scaler: torch.amp.GradScaler | None = None
    ema: ModelEmaV3 | None = None
    mixup_fn: Callable | None = None
    prepare: Callable | None = None  # images = prepare(images) on the device, before mixup (Loaders.train_prepare)
    print_freq: int = 10
    max_bad_steps: int = 20
    total_epochs: int = 1
    world_size: int = 1
    metrics: MetricsWriter | None = None
    # Collective, called after every update: the stop signal any rank received (0: keep training).
    stop: Callable[[], int] | None = None


@dataclass
class TrainState:
    """Counters that survive across epochs (and are saved in checkpoints)."""

    epoch: int = 0
    global_step: int = 0  # optimizer updates made so far in the run (skipped ones included)
    epoch_batches: int = 0  # micro-batches of `epoch` consumed so far (> 0 when resuming mid-epoch)
    # loss sum and count (over every rank) of those micro-batches, so a resumed epoch reports its whole mean
    epoch_loss: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean loss of the finite micro-batches (of this call), over all ranks
    updates: int  # made by this call
    skipped: int  # updates skipped because the loss or gradient norm was not finite
    seconds: float
    stop_signal: int = 0  # the signal that stopped the epoch early (0: it ran to its end)


def _ddp(model: nn.Module) -> DistributedDataParallel | None:
    inner = getattr(model, "_orig_mod", model)  # torch.compile wraps the DDP module
    return inner if isinstance(inner, DistributedDataParallel) else None


def _grad_sync(model: nn.Module, sync: bool) -> ContextManager:
    ddp = _ddp(model)
    return contextlib.nullcontext() if sync or ddp is None else ddp.no_sync()


def _total_norm(params: list[torch.Tensor], clip: float | None) -> torch.Tensor:
    """The global L2 norm of the gradients (before clipping), clipping them to `clip` when set."""
    if clip:
        return torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=True)


def _optimizer_step(ctx: TrainContext, bad: torch.Tensor) -> None:
    """Apply the update unless `bad`; the fp16 GradScaler makes the same decision from the gradients."""
    opt = ctx.optimizer
    if ctx.scaler is not None:
        ctx.scaler.step(opt)
        ctx.scaler.update()
    elif opt.defaults.get("fused"):
        opt.found_inf = bad.float()  # read by the fused kernel on the device: no host sync
        try:
            opt.step()
        finally:
            del opt.found_inf
    elif not bool(bad):  # non-fused optimizers cannot skip on the device: one host read per update
        opt.step()


class _Meters:
    """Device-side sums, read to the host only when a line is logged."""

    def __init__(self, device: torch.device) -> None:
        z = lambda: torch.zeros((), device=device, dtype=torch.float64)  # noqa: E731
        self.loss_sum, self.loss_count = z(), z()  # epoch, finite micro-batches only
        self.win_sum, self.win_count = z(), z()  # since the last log line
        self.bad_run, self.bad_max, self.bad_total = z(), z(), z()  # consecutive / worst run / total
        self.grad_norm = z()

    def add_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Add a micro-batch loss; return the 'not finite' flag."""
        finite = torch.isfinite(loss)
        value = torch.where(finite, loss, torch.zeros_like(loss)).double()
        self.loss_sum += value
        self.loss_count += finite
        self.win_sum += value
        self.win_count += finite
        return ~finite

    def add_update(self, bad: torch.Tensor, grad_norm: torch.Tensor) -> None:
        bad = bad.double()
        self.bad_run.add_(1).mul_(bad)  # +1 on a bad update, back to 0 on a good one
        torch.maximum(self.bad_max, self.bad_run, out=self.bad_max)
        self.bad_total += bad
        self.grad_norm.copy_(grad_norm.detach())


def _forward_backward(model: nn.Module, ctx: TrainContext, images: torch.Tensor, targets: torch.Tensor,
                      group_size: int, sync: bool) -> torch.Tensor:
    """Forward and backward of one micro-batch, its loss divided by the size of its accumulation group; DDP
    all-reduces the gradients only when `sync`. Returns the (undivided, detached) loss."""
    images = images.to(ctx.device, non_blocking=True)
    targets = targets.to(ctx.device, non_blocking=True)
    if ctx.prepare is not None:
        images = ctx.prepare(images)
    if ctx.mixup_fn is not None:
        images, targets = ctx.mixup_fn(images, targets)
    with _grad_sync(model, sync):
        with ctx.amp.autocast():
            loss = ctx.criterion(model(images), targets)
        scaled = loss / group_size
        (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
    return loss.detach()


def _update(ctx: TrainContext, state: TrainState, params: list[torch.Tensor], meters: _Meters,
            group_bad: torch.Tensor) -> None:
    """One optimizer update from the accumulated gradients, at the scheduled learning rate; skipped on every rank
    when a micro-batch loss of the group (`group_bad`) or the gradient norm is not finite on any rank. Then the
    EMA follows, and the update is counted whether it was skipped or not."""
    opt = ctx.optimizer
    set_lr(opt, ctx.schedule.lr_at(state.global_step))
    if ctx.scaler is not None:
        ctx.scaler.unscale_(opt)
    grad_norm = _total_norm(params, ctx.clip_grad).to(ctx.device)
    bad = group_bad | ~torch.isfinite(grad_norm)
    if ctx.world_size > 1:  # a loss that is non-finite on one rank must skip the update on all ranks
        bad = all_reduce_sum(bad.float()) > 0
    _optimizer_step(ctx, bad)
    opt.zero_grad(set_to_none=True)
    meters.add_update(bad, grad_norm)
    state.global_step += 1
    if ctx.ema is not None:
        ema_update(ctx.ema, ctx.ema_source, state.global_step)


def _check_bad(bad_max: float, bad_total: float, ctx: TrainContext, state: TrainState) -> None:
    if ctx.max_bad_steps and bad_max >= ctx.max_bad_steps:
        raise NonFiniteTrainingError(
            f"{int(bad_max)} consecutive updates had a non-finite loss or gradient norm (epoch {state.epoch}, "
            f"update {state.global_step}; {int(bad_total)} skipped this epoch), reaching TRAIN.MAX_BAD_STEPS "
            f"{ctx.max_bad_steps}. The run has diverged: lower TRAIN.BASE_LR, keep TRAIN.CLIP_GRAD on, or "
            "turn AMP off (--disable_amp), then resume from the last checkpoint."
        )


def train_one_epoch(model: nn.Module, loader: Iterable, ctx: TrainContext, state: TrainState) -> EpochStats:
    """Train `model` (possibly DDP-wrapped and compiled) for one pass over `loader`.

    Every ACCUMULATION_STEPS micro-batches make one optimizer update; the last, partial group of an epoch
    makes one too, with its losses averaged over its own size. Update k of the run uses schedule.lr_at(k).
    `loader` holds the epoch's batches after the first `state.epoch_batches` (a whole number of groups). On
    return `state.epoch_batches` is 0 when the epoch ran to its end, else the micro-batches consumed before
    `ctx.stop` ended it (its position for a later call).
    """
    model.train()
    opt, acc, done = ctx.optimizer, ctx.accumulation_steps, state.epoch_batches
    params = [p for g in opt.param_groups for p in g["params"]]
    num_batches = done + len(loader)
    updates = steps_per_epoch(num_batches, acc)
    meters = _Meters(ctx.device)
    group_bad = torch.zeros((), dtype=torch.bool, device=ctx.device)  # a non-finite loss in the current group
    opt.zero_grad(set_to_none=True)
    start = last_time = time.perf_counter()
    images_since, stop_signal = 0, 0
    first_update = update_idx = steps_per_epoch(done, acc)
    for idx, (images, targets) in enumerate(loader, start=done):
        group_start = idx - idx % acc
        group_size = min(acc, num_batches - group_start)
        last_micro = idx == group_start + group_size - 1
        # Forward and backward of one micro-batch; the gradients are all-reduced on the group's last one.
        group_bad |= meters.add_loss(_forward_backward(model, ctx, images, targets, group_size, last_micro))
        images_since += images.shape[0]
        if not last_micro:
            continue
        # The update, then the stop check every rank takes part in, then (every PRINT_FREQ updates) the log line.
        _update(ctx, state, params, meters, group_bad)
        group_bad.zero_()
        state.epoch_batches = idx + 1
        update_idx += 1
        stop_signal = ctx.stop() if ctx.stop is not None else 0
        if (ctx.print_freq and (update_idx - 1) % ctx.print_freq == 0) or update_idx == updates or stop_signal:
            now = time.perf_counter()
            _log_step(ctx, state, meters, (update_idx, updates), images_since / max(now - last_time, 1e-9),
                      (now - start) / (update_idx - first_update))
            images_since, last_time = 0, time.perf_counter()
        if stop_signal:
            break
    # The epoch's mean loss over every rank (with the part before a stop), the divergence check, the summary line.
    loss_sum, loss_count = all_reduce_sum(torch.stack([meters.loss_sum, meters.loss_count])).tolist()
    loss_sum, loss_count = loss_sum + state.epoch_loss[0], loss_count + state.epoch_loss[1]
    bad_max, bad_total = meters.bad_max.item(), meters.bad_total.item()
    _check_bad(bad_max, bad_total, ctx, state)
    seconds = time.perf_counter() - start
    made = update_idx - first_update
    if stop_signal:
        state.epoch_loss = (loss_sum, loss_count)
        log.info("EPOCH %d stopped after update %d of %d (%d micro-batches)", state.epoch, update_idx, updates,
                 state.epoch_batches)
    else:
        state.epoch_batches, state.epoch_loss = 0, (0.0, 0.0)
        log.info("EPOCH %d training takes %s (%d updates, %d skipped)", state.epoch, format_seconds(seconds),
                 made, int(bad_total))
    return EpochStats(loss=loss_sum / loss_count if loss_count else float("nan"), updates=made,
                      skipped=int(bad_total), seconds=seconds, stop_signal=stop_signal)


def _log_step(ctx: TrainContext, state: TrainState, meters: _Meters, at: tuple[int, int], img_per_s_rank: float,
              sec_per_update: float) -> None:
    """Read the device meters (the only host sync between log lines), then log and record them; `at` is (updates
    done, updates in the epoch)."""
    update_idx, updates = at
    win_sum, win_count, grad_norm, bad_max, bad_total = torch.stack(
        [meters.win_sum, meters.win_count, meters.grad_norm, meters.bad_max, meters.bad_total]
    ).tolist()
    meters.win_sum.zero_()
    meters.win_count.zero_()
    _check_bad(bad_max, bad_total, ctx, state)
    lr = ctx.optimizer.param_groups[0]["lr"]
    loss = win_sum / win_count if win_count else float("nan")
    scale = ctx.scaler.get_scale() if ctx.scaler is not None else 1.0
    mem = peak_memory_mb(ctx.device)
    eta_epoch = sec_per_update * (updates - update_idx)
    eta_run = eta_epoch + sec_per_update * updates * (ctx.total_epochs - state.epoch - 1)
    img_per_s = img_per_s_rank * ctx.world_size
    log.info(
        "Train: [%d/%d][%d/%d] eta %s (run %s) lr %.6e loss %.4f grad_norm %.4f loss_scale %.0f "
        "%.1f img/s mem %.0fMB%s",
        state.epoch, ctx.total_epochs, update_idx, updates, format_seconds(eta_epoch), format_seconds(eta_run),
        lr, loss, grad_norm, scale, img_per_s, mem, f" skipped {int(bad_total)}" if bad_total else "",
    )
    if ctx.metrics is not None:
        ctx.metrics.write({
            "kind": "step", "epoch": state.epoch, "step": state.global_step, "lr": lr, "loss": loss,
            "grad_norm": grad_norm, "loss_scale": scale, "img_per_s": img_per_s, "mem_mb": mem,
            "eta_s": eta_epoch, "eta_run_s": eta_run, "skipped": int(bad_total),
        })
