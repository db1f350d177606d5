"""The training state <-> the checkpoint dict (format and file handling live in engine/checkpoint.py).

A checkpoint written after epoch N holds everything the next epoch depends on: weights, optimizer moments,
the schedule position (the global update count: the learning rate is a pure function of it), the loss
scaler, the EMA, the best accuracy so far and every rank's random-number state. Only plain tensors,
numbers, strings and containers go in, so it loads with torch.load(weights_only=True).

A checkpoint written when a preemption signal stopped epoch N part way also holds `epoch_progress` (epoch N,
the micro-batches each rank consumed, and the batch layout they were counted in); its "epoch" is N - 1, the
last finished one, so tools that only know the official format restart epoch N from its beginning.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from yacs.config import CfgNode

from configs import Derived, dump_config
from engine.checkpoint import CheckpointError
from engine.rng import restore_rng_state
from engine.distributed import DistInfo
from engine.ema import ema_state, load_ema_state
from engine.train import TrainContext, TrainState
from models.weights import WeightsError, load_weights

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What the epoch loop tracks besides the TrainState."""

    max_accuracy: float = 0.0  # best top-1 (of the weights TEST.USE_EMA reports) so far
    best_epoch: int = -1
    last_checkpoint: str = ""
    planned_updates: int = 0  # the run's length in updates once TRAIN.TIME_BUDGET fixed it (0: TRAIN.EPOCHS)
    started: float = 0.0  # time.monotonic() when this process started the run (not saved)


@dataclass
class Run:
    """One training run, built once by engine.run and passed down: what an epoch, an update, a save and a
    restore need."""

    cfg: CfgNode
    info: DistInfo
    derived: Derived
    model: nn.Module  # what the training step calls: `raw` inside DDP and/or torch.compile
    raw: nn.Module  # the model itself: its weights are saved and evaluated, and the EMA follows them
    train: TrainContext  # optimizer, schedule, scaler, EMA, ... of the update step
    batches: int  # micro-batches per epoch (per rank)
    updates: int  # optimizer updates per epoch
    loaders: Any = None  # data.Loaders
    state: TrainState = field(default_factory=TrainState)
    progress: Progress = field(default_factory=Progress)


def checkpoint_state(run: Run, rng: list[dict]) -> dict:
    """The dict saved after epoch `run.state.epoch` finished, or part way through it when state.epoch_batches > 0;
    `rng` holds every rank's RNG state (gather_rng_states)."""
    cfg, state, progress, train = run.cfg, run.state, run.progress, run.train
    out = {
        "model": run.raw.state_dict(),
        "optimizer": train.optimizer.state_dict(),
        "lr_scheduler": {"step": state.global_step, "updates_per_epoch": run.updates},
        "scaler": train.scaler.state_dict() if train.scaler is not None else {},
        "ema": ema_state(train.ema) if train.ema is not None else {},
        "epoch": state.epoch,
        "global_step": state.global_step,
        "max_accuracy": progress.max_accuracy,
        "best_epoch": progress.best_epoch,
        "planned_updates": progress.planned_updates,
        "rng": rng,
        "config": dump_config(cfg),
        "derived": run.derived.as_dict(),
    }
    if state.epoch_batches:
        out["epoch"] = state.epoch - 1
        out["epoch_progress"] = {
            "epoch": state.epoch, "micro_batches": state.epoch_batches, "batch_size": cfg.DATA.BATCH_SIZE,
            "accumulation_steps": cfg.TRAIN.ACCUMULATION_STEPS, "world_size": run.derived.world_size,
            "loss_sum": state.epoch_loss[0], "loss_count": state.epoch_loss[1],
        }
    return out


def _require(ckpt: dict, path: str, *keys: str) -> None:
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"Checkpoint {path} lacks {', '.join(missing)}, so training cannot resume from it. To start a new "
            "run from its weights use --pretrained instead of --resume."
        )


def restore_state(ckpt: dict, path: str, run: Run) -> tuple[TrainState, Progress]:
    """Load a training checkpoint into the run's live objects (weights, optimizer, scaler, EMA, this rank's RNG);
    return the state to continue from (the next epoch, or the saved position inside an epoch that was stopped
    part way)."""
    _require(ckpt, path, "model", "optimizer", "epoch", "global_step")
    derived, model, train = run.derived, run.raw, run.train
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"Checkpoint {path} does not fit this model ({str(e).splitlines()[0]}...). Resume with the "
            "config the checkpoint was trained with (its config.yaml sits next to it)."
        ) from None
    train.optimizer.load_state_dict(ckpt["optimizer"])
    if train.scaler is not None and ckpt.get("scaler"):
        train.scaler.load_state_dict(ckpt["scaler"])
    if train.ema is not None:
        if ckpt.get("ema"):
            load_ema_state(train.ema, ckpt["ema"])
        else:
            log.warning("Checkpoint %s has no EMA weights; the EMA restarts from the current weights.", path)
            load_ema_state(train.ema, model.state_dict())
    _warn_if_changed(ckpt, path, derived, run.updates)
    rng = ckpt.get("rng") or []
    if len(rng) == derived.world_size:
        restore_rng_state(rng[run.info.rank])
    else:
        log.warning("Checkpoint %s holds RNG states of %d ranks, this run has %d; they are not restored.",
                    path, len(rng), derived.world_size)
    state = TrainState(epoch=int(ckpt["epoch"]) + 1, global_step=int(ckpt["global_step"]))
    state.epoch_batches = _mid_epoch_position(ckpt, path, run, state.epoch)
    if state.epoch_batches:  # the loss of the part already trained, so the epoch's mean covers all of it
        saved = ckpt["epoch_progress"]
        state.epoch_loss = (float(saved.get("loss_sum", 0.0)), float(saved.get("loss_count", 0.0)))
    progress = Progress(max_accuracy=float(ckpt.get("max_accuracy", 0.0)), best_epoch=int(ckpt.get("best_epoch", -1)),
                        last_checkpoint=path,
                        # checkpoints from before the length was counted in updates hold whole epochs
                        planned_updates=int(ckpt.get("planned_updates", ckpt.get("planned_epochs", 0) * run.updates)))
    return state, progress


def _warn_if_changed(ckpt: dict, path: str, derived: Derived, updates_per_epoch: int) -> None:
    saved = ckpt.get("derived") or {}
    for key in ("world_size", "total_batch", "base_lr"):
        if key in saved and saved[key] != getattr(derived, key):
            log.warning("Resuming %s with %s %s (the checkpoint was trained with %s).",
                        path, key, getattr(derived, key), saved[key])
    saved_upe = (ckpt.get("lr_scheduler") or {}).get("updates_per_epoch")
    if saved_upe is not None and saved_upe != updates_per_epoch:
        log.warning("Checkpoint %s made %d updates per epoch, this run makes %d: the schedule continues from "
                    "update %d.", path, saved_upe, updates_per_epoch, ckpt["global_step"])


def _mid_epoch_position(ckpt: dict, path: str, run: Run, epoch: int) -> int:
    """Micro-batches of `epoch` the checkpoint already trained on (0: start the epoch from its beginning)."""
    saved = ckpt.get("epoch_progress")
    if not saved:
        return 0
    cfg, batches_per_epoch = run.cfg, run.batches
    now = {"epoch": epoch, "batch_size": cfg.DATA.BATCH_SIZE, "accumulation_steps": cfg.TRAIN.ACCUMULATION_STEPS,
           "world_size": run.derived.world_size}
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in now.items() if saved.get(k) != v]
    micro = int(saved.get("micro_batches", 0))
    if micro > batches_per_epoch:
        changed.append(f"{micro} micro-batches done of an epoch of {batches_per_epoch}")
    if changed:
        log.warning("Checkpoint %s stopped part way through epoch %s, but the batch layout changed (%s): epoch %d "
                    "restarts from its first batch, the schedule continues from update %d.",
                    path, saved.get("epoch"), ", ".join(changed), epoch, ckpt["global_step"])
        return 0
    return micro


def restore_weights_for_eval(ckpt: dict, path: str, model: nn.Module, use_ema: bool) -> bool:
    """Load a checkpoint's weights (its EMA weights when `use_ema` and present); return whether EMA was used."""
    _require(ckpt, path, "model")
    take_ema = bool(use_ema and ckpt.get("ema"))
    if use_ema and not take_ema:
        log.warning("TEST.USE_EMA is set but checkpoint %s has no EMA weights; evaluating its model weights.", path)
    # load_weights also reads official/timm layouts (e.g. an official checkpoint passed to --resume --eval).
    try:
        load_weights(model, ckpt["ema"] if take_ema else ckpt["model"], mode="exact")
    except WeightsError as e:
        saved = ckpt.get("config")
        trained = ""
        if isinstance(saved, str):  # this project's checkpoint: it holds the config it was trained with
            config_yaml = os.path.join(os.path.dirname(os.path.abspath(path)), "config.yaml")
            trained = (f" Its run's config is {config_yaml}: pass it to --cfg." if os.path.isfile(config_yaml) else
                       " It holds the config it was trained with (its 'config' entry): save that to a file and pass "
                       "it to --cfg.")
        raise CheckpointError(f"Checkpoint {path} does not fit the model of this config.{trained}\n{e}") from None
    return take_ema
