"""Parameter groups without weight decay, the optimizer, and the learning rate as a pure function of the step.

The schedule is not an object stepped by the loop: `LRSchedule.lr_at(step)` gives the learning rate of
optimizer update `step` (0-based, counted over the whole run), so resuming only needs the step number.
It matches timm's schedulers as timm's train.py drives them (update k uses the value timm computes for
t = k). The official Swin loop calls `step_update` with the index of the update just made, so its first two
updates share the warmup start value; here every update gets its own.

Gradient accumulation with a trailing partial group: an epoch of `n` micro-batches makes ceil(n / ACC)
updates, the last one from the leftover micro-batches (the official release drops those gradients into the
next epoch's first update and sizes its schedule with n // ACC). The schedule length uses the same
ceil(n / ACC), so the last update of the run reaches the end of the schedule.
"""
from __future__ import annotations

import bisect
import inspect
import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from yacs.config import CfgNode

from configs import ConfigError, Derived

log = logging.getLogger(__name__)


def steps_per_epoch(num_batches: int, accumulation_steps: int) -> int:
    """Optimizer updates in an epoch of `num_batches` micro-batches (the trailing partial group counts)."""
    return math.ceil(num_batches / accumulation_steps)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of trainable parameters that get no weight decay, by the official rule.

    1-D tensors (norms, biases), names ending in ".bias", names in `model.no_weight_decay()` and names
    containing any of `model.no_weight_decay_keywords()`; models without those methods still work.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    keywords = set(model.no_weight_decay_keywords()) if hasattr(model, "no_weight_decay_keywords") else set()
    return {
        name
        for name, p in model.named_parameters()
        if p.requires_grad
        and (p.ndim <= 1 or name.endswith(".bias") or name in skip or any(k in name for k in keywords))
    }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[{decayed params}, {params with weight_decay 0}] for the trainable parameters, in model order."""
    skip = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fused_ok(opt_cls: type, device: torch.device) -> bool:
    return "fused" in inspect.signature(opt_cls).parameters and device.type in ("cuda", "cpu")


def build_optimizer(cfg: CfgNode, model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (eps, betas from TRAIN.OPTIMIZER) or SGD (Nesterov momentum), as the official release.

    Fused kernels are used where torch has them (CUDA and CPU): besides being faster, a fused step reads
    a `found_inf` flag on the device, so a non-finite update is skipped without a host sync.
    """
    name = cfg.TRAIN.OPTIMIZER.NAME.lower()
    groups = param_groups(model, cfg.TRAIN.WEIGHT_DECAY)
    if name == "adamw":
        cls, kwargs = torch.optim.AdamW, {"eps": cfg.TRAIN.OPTIMIZER.EPS, "betas": tuple(cfg.TRAIN.OPTIMIZER.BETAS)}
    elif name == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.TRAIN.OPTIMIZER.MOMENTUM, "nesterov": True}
        if cfg.TRAIN.OPTIMIZER.MOMENTUM <= 0:
            raise ConfigError("TRAIN.OPTIMIZER.MOMENTUM must be > 0 for SGD (Nesterov momentum, as official).")
    else:
        raise ConfigError(f"TRAIN.OPTIMIZER.NAME {name!r} is not supported; choose adamw or sgd.")
    if _fused_ok(cls, device):
        kwargs["fused"] = True
    optimizer = cls(groups, lr=lr, weight_decay=cfg.TRAIN.WEIGHT_DECAY, **kwargs)
    if name == "sgd":
        zero_momentum_buffers(optimizer)
    return optimizer


def zero_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """Start SGD's momentum buffers at zero instead of lazily.

    torch's fused SGD allocates them uninitialized on its first step and fills them in the kernel; when that
    first step is skipped (found_inf), garbage would enter the next update. With zero buffers the first
    real update is bit-identical to the lazy one (buf = 0.9 * 0 + g = g).
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            optimizer.state[p].setdefault("momentum_buffer", torch.zeros_like(p, memory_format=torch.preserve_format))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group the learning rate `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate per optimizer update: linear warmup, then cosine, step or multistep decay.

    Step counts are in optimizer updates. The arithmetic follows timm's CosineLRScheduler and
    StepLRScheduler term by term (so the values agree to the last bit); multistep follows the official
    release (the rate drops at the first update of each milestone epoch, counted from step 0).
    """

    name: str  # cosine | step | multistep
    base_lr: float
    warmup_lr: float
    min_lr: float
    total_steps: int  # updates in the whole run
    warmup_steps: int = 0
    warmup_prefix: bool = True  # decay starts after warmup (cosine length total - warmup) instead of at 0
    decay_steps: int = 1  # step: updates between decays
    decay_rate: float = 0.1  # step: factor per decay; multistep: factor per milestone
    milestones: tuple[int, ...] = field(default_factory=tuple)  # multistep: update indices
    hold_steps: int = 0  # cosine: the peak rate lasts until this update and the decay runs over the rest

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer update `step` (0-based over the whole run)."""
        if step < self.warmup_steps:
            return self.warmup_lr + step * ((self.base_lr - self.warmup_lr) / self.warmup_steps)
        if self.name == "multistep":
            return self.base_lr * (self.decay_rate ** bisect.bisect_right(self.milestones, step))
        t = step - self.warmup_steps if self.warmup_prefix else step
        if self.name == "step":
            return self.base_lr * (self.decay_rate ** (t // self.decay_steps))
        # the cosine starts after the warmup (warmup_prefix) or at 0, or after a longer hold at the peak rate
        start = max(self.warmup_steps if self.warmup_prefix else 0, self.hold_steps)
        if step < start:
            return self.base_lr
        t, length = step - start, self.total_steps - start
        if t >= length:  # past the single cycle (timm: cycle_limit=1)
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t / length))


def build_schedule(cfg: CfgNode, derived: Derived, updates_per_epoch: int, epochs: int | None = None,
                   total_updates: int | None = None) -> LRSchedule:
    """The schedule of TRAIN.LR_SCHEDULER with the linearly scaled rates of `derived`, over `epochs` (default
    TRAIN.EPOCHS), or over `total_updates` updates when TRAIN.TIME_BUDGET planned the run's length.

    Under TRAIN.TIME_BUDGET the run's length is fixed after the first epoch, so the first epoch's rates must not
    depend on it: a cosine decay starts at the end of the warmup or of the first epoch, whichever is later (with a
    warmup shorter than an epoch, the peak rate holds for the rest of the first epoch)."""
    sched = cfg.TRAIN.LR_SCHEDULER
    epochs = cfg.TRAIN.EPOCHS if epochs is None else epochs
    total = int(epochs * updates_per_epoch) if total_updates is None else total_updates
    warmup = int(cfg.TRAIN.WARMUP_EPOCHS * updates_per_epoch)
    hold = updates_per_epoch if cfg.TRAIN.TIME_BUDGET > 0 and warmup < updates_per_epoch else 0
    common = dict(
        name=sched.NAME, base_lr=derived.base_lr, warmup_lr=derived.warmup_lr, min_lr=derived.min_lr,
        total_steps=total, warmup_steps=warmup, warmup_prefix=bool(sched.WARMUP_PREFIX),
    )
    if sched.NAME == "cosine":
        if (total - max(warmup, hold) if sched.WARMUP_PREFIX or hold else total) <= 0:
            raise ConfigError(
                f"TRAIN.EPOCHS {epochs} leaves no cosine decay after TRAIN.WARMUP_EPOCHS "
                f"{cfg.TRAIN.WARMUP_EPOCHS:g}; make EPOCHS larger than WARMUP_EPOCHS."
            )
        return LRSchedule(**common, hold_steps=hold)
    if sched.NAME == "step":
        decay = int(sched.DECAY_EPOCHS * updates_per_epoch)
        if decay <= 0:
            raise ConfigError(f"TRAIN.LR_SCHEDULER.DECAY_EPOCHS must be > 0 for the step schedule, got {sched.DECAY_EPOCHS}.")
        return LRSchedule(**common, decay_steps=decay, decay_rate=sched.DECAY_RATE)
    if sched.NAME == "multistep":
        milestones = tuple(sorted(int(m * updates_per_epoch) for m in sched.MULTISTEPS))
        if milestones and warmup > milestones[0]:
            raise ConfigError(
                f"TRAIN.LR_SCHEDULER.MULTISTEPS {list(sched.MULTISTEPS)} has a milestone inside the "
                f"{cfg.TRAIN.WARMUP_EPOCHS:g} warmup epochs; move it after the warmup."
            )
        return LRSchedule(**common, decay_rate=sched.GAMMA, milestones=milestones)
    raise ConfigError(f"TRAIN.LR_SCHEDULER.NAME {sched.NAME!r} is not supported; choose cosine, step or multistep.")


def evaluations(first: int, count: int, every: int) -> int:
    """How many of `count` epochs from epoch `first` end with an evaluation: every `every`-th epoch (EVAL_FREQ;
    0: none of them) and the last."""
    if count <= 0:
        return 0
    last = first + count - 1
    if every <= 0:
        return 1
    periodic = (last + 1) // every - first // every
    return periodic + (0 if (last + 1) % every == 0 else 1)


def updates_within_budget(left_s: float, epoch_s: tuple[float, float], updates_per_epoch: int, epochs_done: int,
                          epochs: tuple[int, int], eval_every: int = 1) -> int:
    """The run's length in optimizer updates for a wall-clock budget (TRAIN.TIME_BUDGET) with `left_s` seconds
    left after `epochs_done` epochs, an epoch taking `epoch_s` = (train_s, eval_s) seconds of training and of
    evaluation (as measured): the whole epochs that fit with their evaluations (every `eval_every`-th epoch and
    the last, see `evaluations`), then the updates of one more, shorter epoch that fit with its evaluation (when
    that is at least a tenth of an epoch); `epochs` = (min_epochs, max_epochs): at least warmup plus one epoch of
    decay, at most TRAIN.EPOCHS whole epochs."""
    (train_s, eval_s), (min_epochs, max_epochs) = epoch_s, epochs
    left_s = max(left_s, 0.0)

    def seconds(whole: int) -> float:  # `whole` more epochs, each with its evaluations
        return whole * train_s + evaluations(epochs_done, whole, eval_every) * eval_s

    whole = 0
    while epochs_done + whole < max_epochs and seconds(whole + 1) <= left_s:
        whole += 1
    updates = (epochs_done + whole) * updates_per_epoch
    if epochs_done + whole < max_epochs and train_s > 0:
        per_update = train_s / updates_per_epoch
        rest = left_s - whole * train_s - evaluations(epochs_done, whole + 1, eval_every) * eval_s
        part = int(rest // per_update) if rest > 0 else 0
        updates += part if part >= updates_per_epoch / 10 else 0
    return max(min(min_epochs, max_epochs) * updates_per_epoch, min(max_epochs * updates_per_epoch, updates))
