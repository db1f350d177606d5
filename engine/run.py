"""`run(cfg)`: the whole job for one process -- set-up, then throughput, evaluation or training.

Works as one plain process (`python main.py ...`) and under torchrun unchanged. Training: build, resume
(MODEL.RESUME or the newest loadable checkpoint in the run directory), then per epoch: reseed, train,
evaluate (and the EMA), log, checkpoint; finally eval.json + report.md. Everything random in an epoch is a
pure function of (SEED, rank, epoch), so a run resumed at an epoch boundary ends bitwise equal to an
uninterrupted one (same device, processes and workers).

Preemption and Ctrl-C (SIGTERM, SIGUSR1 from SLURM's --signal, SIGINT): every rank finishes its current optimizer
update, the ranks agree to stop after the same one, rank 0 saves ckpt_epoch_<N>_step_<S>.pth with the position
inside the epoch and every rank's RNG state, and the process exits 0; the same command resumes from that update,
bitwise as exact as from an epoch boundary. The ranks check after every update and, while the finished epoch is
evaluated, after every validation batch that every rank has (then evaluation ends early and the epoch's own
checkpoint, without its evaluation, is the one to resume from), so a stop waits for at most one update or one
batch, then the save. Every rank ends with rank 0's message when a save fails, and with one clear message (no
traceback) when a collective fails because another rank died or hung (DIST_TIMEOUT).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import random
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

import data
import models
from configs import ConfigError, Derived, derive, dump_config, train_dir, with_model_of
from engine import checkpoint as ckpt_io
from engine import report
from engine.amp import AmpPolicy, resolve_amp
from engine.distributed import (DistInfo, StopRequest, broadcast_object, cleanup, defer_exit_under_torchrun,
                                peer_failure_message, report_to_launcher, setup_distributed, signal_name)
from engine.ema import build_ema
from engine.evaluate import EvalResult, evaluate
from engine.logging_utils import FILE_ONLY, MetricsWriter, close_logging, setup_logging
from engine.optim import build_optimizer, build_schedule, epochs_within_budget, steps_per_epoch
from engine.state import Progress, checkpoint_state, gather_rng_states, restore_state, restore_weights_for_eval
from engine.throughput import measure_throughput
from engine.train import NonFiniteTrainingError, TrainContext, TrainState, build_criterion, train_one_epoch
from models.build import UnknownModelError
from models.weights import WeightsError, load_weights

log = logging.getLogger(__name__)

# DDP: buffers are not broadcast in every forward (each rank keeps its own BatchNorm statistics, as timm and the
# official release do); newer torch names the option forward_sync_buffers and deprecates broadcast_buffers
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})

# Errors a user can cause: reported as one message and exit code 1, without a traceback.
USER_ERRORS = (ConfigError, data.DataError, ckpt_io.CheckpointError, WeightsError, NonFiniteTrainingError,
               UnknownModelError)


def user_message(error: BaseException) -> str:
    """The message of a user error, without the worker's traceback that a DataLoader adds when it re-raises an
    error from one of its worker processes ("Caught ... in DataLoader worker process 1. Original Traceback ...")."""
    text = str(error)
    if "Original Traceback (most recent call last):" not in text:
        return text
    last = text.rstrip().splitlines()[-1]  # "data.errors.CorruptImageError: Cannot decode image ..."
    head, _, message = last.partition(": ")
    return message if head.endswith(type(error).__name__) else last


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for (SEED, rank, epoch): drop path and mixup draws of that epoch."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def run(cfg: CfgNode) -> int:
    """Run the job the frozen config describes; returns the process exit code."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.TRAIN.DETERMINISTIC:  # cuBLAS reads it when it creates its first handle: before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        return _run(cfg, setup_distributed(cfg.DEVICE, cfg.DIST_TIMEOUT))
    except USER_ERRORS as e:
        message = user_message(e)
        if int(os.environ.get("RANK", 0)) != 0:
            defer_exit_under_torchrun()  # rank 0 most often fails alike: its report is then the one
        log.error("%s", message)  # before logging is set up, Python's last-resort handler prints it to stderr
        report_to_launcher(message)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it: nothing was saved
        log.error("Interrupted; nothing was saved since the last checkpoint.")
        return 130
    except RuntimeError as e:  # a dead or hung peer: its own log holds the cause, a traceback here is noise
        message = peer_failure_message(e, int(os.environ.get("RANK", 0)))
        if message is None:
            report_to_launcher(f"{type(e).__name__}: {e}")
            raise
        defer_exit_under_torchrun()  # the rank that failed first exits first
        log.error("%s", message)
        return 1
    except Exception as e:
        report_to_launcher(f"{type(e).__name__}: {e}")  # the traceback follows on this rank's console
        raise
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        close_logging()
        cleanup()


def _run(cfg: CfgNode, info: DistInfo) -> int:
    started = time.monotonic()  # TRAIN.TIME_BUDGET counts from here
    seed_everything(cfg.SEED + info.rank)
    cfg, adopted = _model_of_checkpoint_to_evaluate(cfg)
    name, changes = models.run_name(cfg)
    run_dir = derive(cfg, info.world_size, model_name=name).run_dir
    setup_logging(run_dir, info.rank)
    if changes and info.is_main:
        log.warning("MODEL.NAME %s names a registered variant, but this config changes its architecture (%s): the "
                    "run goes by %s. Set MODEL.NAME to name it yourself.", cfg.MODEL.NAME, "; ".join(changes), name)
    if adopted and info.is_main:
        log.warning("Checkpoint %s holds another model than this config's; evaluating it with the model config saved "
                    "in it: %s.", cfg.MODEL.RESUME, ", ".join(adopted))
    _choose_kernels(cfg, info.device)
    amp = resolve_amp(cfg, info.device)
    inference_only = bool(cfg.EVAL_MODE or cfg.THROUGHPUT_MODE)
    loaders = data.build_loaders(cfg, info.rank, info.world_size, info.device, eval_only=inference_only)
    derived = derive(cfg, info.world_size, loaders.num_classes, model_name=name)
    log.info("rank %d of %d on %s, precision %s (%s); run directory %s", info.rank, info.world_size, info.device,
             amp.dtype_name, amp.reason, run_dir)
    if info.is_main:
        _write_run_files(cfg, derived)
    model = models.build_model(cfg, info.device).to(info.device)
    log.info("model %s/%s: %s parameters", cfg.MODEL.TYPE, name,
             f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if cfg.THROUGHPUT_MODE:
        result = measure_throughput(model, loaders.val_loader, info.device, amp, prepare=loaders.val_prepare)
        with MetricsWriter(run_dir, info.is_main, tensorboard=False) as metrics:
            metrics.write({"kind": "throughput", "step": 0, **result.__dict__})
        return 0
    if cfg.EVAL_MODE:
        return _evaluate_only(cfg, info, derived, model, loaders, amp)
    return _train(cfg, info, derived, model, loaders, amp, started)


def _model_of_checkpoint_to_evaluate(cfg: CfgNode) -> tuple[CfgNode, list[str]]:
    """--eval --resume of this project's checkpoint evaluates the model it holds: where the config's model keys
    (MODEL.TYPE, MODEL.SWIN.*, DATA.IMG_SIZE) differ from those saved in it, the saved ones (and its MODEL.NAME)
    replace them; the changed keys are returned for the log. Anything else: the config unchanged."""
    if not (cfg.EVAL_MODE and cfg.MODEL.RESUME):
        return cfg, []
    saved = ckpt_io.load_checkpoint(cfg.MODEL.RESUME, mmap=True).get("config")
    if not isinstance(saved, str):  # official, timm or other weights: the config decides the model
        return cfg, []
    adopted, changed = with_model_of(cfg, saved, cfg.MODEL.RESUME)
    if all(c.startswith("MODEL.NAME ") for c in changed):  # the same model under another name: keep this run's
        return cfg, []
    return adopted, changed


def _is_own_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint this project wrote (it holds the config it was trained with)."""
    try:
        return isinstance(ckpt_io.load_checkpoint(path, mmap=True).get("config"), str)
    except ckpt_io.CheckpointError:
        return False


def _choose_kernels(cfg: CfgNode, device: torch.device) -> None:
    """TF32 matmuls on CUDA; cuDNN autotuning unless TRAIN.DETERMINISTIC, which also makes torch use deterministic
    algorithms everywhere (the bias-table gather's backward sorts instead of adding atomically, SDPA's
    memory-efficient backward runs its deterministic variant) and fail loudly on an op that has none."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.TRAIN.DETERMINISTIC
        torch.backends.cudnn.deterministic = bool(cfg.TRAIN.DETERMINISTIC)
    torch.use_deterministic_algorithms(bool(cfg.TRAIN.DETERMINISTIC))
    if cfg.TRAIN.DETERMINISTIC:
        log.info("TRAIN.DETERMINISTIC: deterministic algorithms, cuDNN autotuning off")


def _write_run_files(cfg: CfgNode, derived: Derived) -> None:
    os.makedirs(derived.run_dir, exist_ok=True)
    with open(os.path.join(derived.run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(dump_config(cfg))
    with open(os.path.join(derived.run_dir, "derived.json"), "w", encoding="utf-8") as f:
        json.dump(derived.as_dict(), f, indent=2)
    log.info("config:\n%s", dump_config(cfg), extra=FILE_ONLY)
    log.info("derived: %s", json.dumps(derived.as_dict()), extra=FILE_ONLY)


def _resume_path(cfg: CfgNode, info: DistInfo, run_dir: str) -> str:
    """MODEL.RESUME, else (TRAIN.AUTO_RESUME) the newest loadable checkpoint in the run directory; rank 0
    decides so that every rank loads the same file."""
    if cfg.MODEL.RESUME:
        return cfg.MODEL.RESUME
    found = ""
    if cfg.TRAIN.AUTO_RESUME and info.is_main:
        found = ckpt_io.find_resume_checkpoint(run_dir) or ""
    return broadcast_object(found)


def _evaluate_only(cfg: CfgNode, info: DistInfo, derived: Derived, model, loaders, amp: AmpPolicy) -> int:
    # An explicit --resume, then an explicit --pretrained, then the newest checkpoint of the training run directory.
    source = cfg.MODEL.RESUME or ("" if cfg.MODEL.PRETRAINED else
                                  _resume_path(cfg, info, train_dir(cfg, derived.model_name)))
    used_ema = False
    if source:
        used_ema = restore_weights_for_eval(ckpt_io.load_checkpoint(source), source, model, cfg.TEST.USE_EMA)
    elif cfg.MODEL.PRETRAINED:
        source = cfg.MODEL.PRETRAINED
        try:
            load_weights(model, source, mode="exact")  # logs what it loaded
        except WeightsError as e:
            if not _is_own_checkpoint(source):
                raise
            raise WeightsError(f"{e}\n{source} is a checkpoint of this project: `--eval --resume {source}` evaluates "
                               "the model saved in it, whatever --cfg says.") from None
    else:
        raise ConfigError("EVAL_MODE needs weights: pass --resume <checkpoint> or --pretrained <weights file>.")
    result = evaluate(model, loaders.val_loader, info.device, amp, prepare=loaders.val_prepare)
    _log_eval("eval", result, len(loaders.val_set))
    if info.is_main:
        record = report.build_eval_record(cfg, model, result, source, used_ema, info.device,
                                          extra={"world_size": info.world_size, "amp_dtype": amp.dtype_name})
        report.write_eval_report(derived.run_dir, record)
    return 0


def _log_eval(name: str, r: EvalResult, expected: int) -> None:
    log.info("%s: Acc@1 %.3f Acc@5 %.3f loss %.4f on %d images", name, r.top1_acc, r.top5_acc, r.loss, r.num_images)
    if r.num_images != expected:
        raise RuntimeError(f"evaluated {r.num_images} images but the validation set has {expected}")


def _train(cfg: CfgNode, info: DistInfo, derived: Derived, model, loaders, amp: AmpPolicy, started: float) -> int:
    raw = model
    if info.is_main:
        ckpt_io.remove_stale_temp_files(derived.run_dir)
    resume = _resume_path(cfg, info, derived.run_dir)
    if cfg.MODEL.PRETRAINED and not resume:
        load_weights(raw, cfg.MODEL.PRETRAINED, mode="finetune")  # logs what it loaded, resized, remapped
    elif cfg.MODEL.PRETRAINED:
        log.info("MODEL.PRETRAINED is ignored: resuming from %s", resume)
    if info.is_main and derived.total_batch < 32:
        log.warning("Linear LR scaling: TRAIN.BASE_LR %g is per 512 images, so %d images per update train at %.2e, "
                    "where little may be learned; raise --batch-size or --accumulation-steps, or set TRAIN.BASE_LR "
                    "(and WARMUP_LR, MIN_LR) %dx higher to train at the rate of 512 images per update.",
                    cfg.TRAIN.BASE_LR, derived.total_batch, derived.base_lr, round(512 / derived.total_batch))
    optimizer = build_optimizer(cfg, raw, derived.base_lr, info.device)
    if info.world_size > 1:  # also broadcasts rank 0's weights, so build the EMA after this
        model = DistributedDataParallel(
            raw, device_ids=[info.device.index] if info.device.type == "cuda" else None, **_NO_BUFFER_SYNC
        )
    ema = build_ema(cfg, raw)
    if cfg.TRAIN.COMPILE:
        model = torch.compile(model)
    batches = len(loaders.train_loader)
    updates = steps_per_epoch(batches, cfg.TRAIN.ACCUMULATION_STEPS)
    scaler = amp.make_scaler()
    state = TrainState(epoch=cfg.TRAIN.START_EPOCH, global_step=cfg.TRAIN.START_EPOCH * updates)
    progress = Progress()
    if resume:
        state, progress = restore_state(ckpt_io.load_checkpoint(resume), resume, info.rank, cfg, derived, raw,
                                        optimizer, scaler, ema, batches)
        where = (f"epoch {state.epoch} after {state.epoch_batches} of {batches} micro-batches" if state.epoch_batches
                 else f"epoch {state.epoch - 1}")
        log.info("resumed from %s (%s, step %d)", resume, where, state.global_step)
    progress.started = started
    epochs = progress.planned_epochs or cfg.TRAIN.EPOCHS  # the length TRAIN.TIME_BUDGET fixed, once it has
    with (StopRequest(cfg.DIST_TIMEOUT) as stop,
          MetricsWriter(derived.run_dir, info.is_main, resume_step=state.global_step if resume else None) as metrics):
        stop.shield_workers(loaders.train_loader)
        stop.shield_workers(loaders.val_loader)
        ctx = TrainContext(
            optimizer=optimizer, schedule=build_schedule(cfg, derived, updates, epochs),
            criterion=build_criterion(cfg, loaders.mixup_fn is not None),
            amp=amp, device=info.device, ema_source=raw, accumulation_steps=cfg.TRAIN.ACCUMULATION_STEPS,
            clip_grad=cfg.TRAIN.CLIP_GRAD, scaler=scaler, ema=ema, mixup_fn=loaders.mixup_fn,
            prepare=loaders.train_prepare, print_freq=cfg.PRINT_FREQ, max_bad_steps=cfg.TRAIN.MAX_BAD_STEPS,
            total_epochs=epochs,
            world_size=info.world_size, metrics=metrics, stop=stop.agreed,
        )
        return _train_epochs(cfg, info, derived, model, raw, loaders, amp, ctx, state, progress, updates)


def _train_epochs(cfg: CfgNode, info: DistInfo, derived: Derived, model, raw, loaders, amp: AmpPolicy,
                  ctx: TrainContext, state: TrainState, progress: Progress, updates: int) -> int:
    """The epoch loop, then the final report; returns the exit code."""
    report_path = os.path.join(derived.run_dir, "eval.json")
    if state.epoch >= ctx.total_epochs and os.path.exists(report_path):
        log.info("%s has finished all %d epochs and written %s: nothing to do. Train again under another --tag, or "
                 "evaluate a checkpoint with --eval --resume CHECKPOINT.", derived.run_dir, ctx.total_epochs,
                 report_path)
        return 0
    budget = (f" (at most: TRAIN.TIME_BUDGET {cfg.TRAIN.TIME_BUDGET:g} min fixes the number after the first epoch)"
              if cfg.TRAIN.TIME_BUDGET > 0 and not progress.planned_epochs else "")
    log.info("start training: epochs %d-%d%s, %d updates per epoch, total batch %d, lr %.3e",
             state.epoch, ctx.total_epochs - 1, budget, updates, derived.total_batch, derived.base_lr)
    final: tuple[EvalResult, bool] | None = None
    epoch = state.epoch
    while epoch < ctx.total_epochs:  # TRAIN.TIME_BUDGET may lower total_epochs after the first epoch
        state.epoch = epoch
        final = _one_epoch(cfg, info, derived, model, raw, loaders, amp, ctx, state, progress, updates)
        if final is None:  # stopped by a signal; the checkpoint to resume from is written
            return 0
        epoch += 1
    ema = ctx.ema
    if final is None:  # resumed after the last epoch: nothing left to train, evaluate what was restored
        use_ema = bool(cfg.TEST.USE_EMA and ema is not None)
        final = (evaluate(ema.module if use_ema else raw, loaders.val_loader, info.device, amp,
                           prepare=loaders.val_prepare), use_ema)
    if info.is_main:
        result, used_ema = final
        record = report.build_eval_record(
            cfg, ema.module if used_ema else raw, result, progress.last_checkpoint, used_ema, info.device,
            extra={"world_size": info.world_size, "amp_dtype": amp.dtype_name, "epochs": ctx.total_epochs,
                   "max_accuracy": progress.max_accuracy, "best_epoch": progress.best_epoch},
        )
        report.write_eval_report(derived.run_dir, record)
    return 0


def _one_epoch(cfg, info: DistInfo, derived: Derived, model, raw, loaders, amp, ctx: TrainContext,
               state: TrainState, progress: Progress, updates: int) -> tuple[EvalResult, bool] | None:
    """Train, evaluate, record and checkpoint one epoch; returns the evaluation the report would use, or None
    when a stop signal ended the run (after saving the checkpoint to resume from)."""
    epoch, resumed_at = state.epoch, state.epoch_batches
    if not state.epoch_batches:  # resuming mid-epoch: the checkpoint restored the RNG states of that moment
        seed_everything(epoch_seed(cfg.SEED, info.rank, epoch))
    loaders.train_sampler.set_epoch(epoch, start_index=state.epoch_batches * cfg.DATA.BATCH_SIZE)
    stats = train_one_epoch(model, loaders.train_loader, ctx, state)
    eval_start = time.monotonic()
    if stats.stop_signal:
        return _save_and_stop(cfg, info, derived, raw, ctx, state, progress, updates, stats.stop_signal)
    result = evaluate(raw, loaders.val_loader, info.device, amp, prepare=loaders.val_prepare, stop=ctx.stop)
    if result is None:  # a stop signal during evaluation: the epoch is saved, its evaluation is not
        return _save_and_stop(cfg, info, derived, raw, ctx, state, progress, updates, ctx.stop(), evaluated=False)
    _log_eval(f"epoch {epoch}", result, len(loaders.val_set))
    record = {"kind": "epoch", "epoch": epoch, "step": state.global_step, "train_loss": stats.loss,
              "val_loss": result.loss, "top1_acc": result.top1_acc, "top1_err": result.top1_err,
              "top5_acc": result.top5_acc, "top5_err": result.top5_err, "skipped": stats.skipped,
              "epoch_s": stats.seconds}
    reported, used_ema = result, False
    if ctx.ema is not None:
        ema_result = evaluate(ctx.ema.module, loaders.val_loader, info.device, amp, prepare=loaders.val_prepare,
                              stop=ctx.stop)
        if ema_result is None:
            return _save_and_stop(cfg, info, derived, raw, ctx, state, progress, updates, ctx.stop(), evaluated=False)
        _log_eval(f"epoch {epoch} EMA", ema_result, len(loaders.val_set))
        record.update({"ema_val_loss": ema_result.loss, "ema_top1_acc": ema_result.top1_acc,
                       "ema_top1_err": ema_result.top1_err, "ema_top5_acc": ema_result.top5_acc,
                       "ema_top5_err": ema_result.top5_err})
        if cfg.TEST.USE_EMA:
            reported, used_ema = ema_result, True
    if cfg.TRAIN.TIME_BUDGET > 0 and not progress.planned_epochs:
        # a resumed epoch trained only part of its batches: scale its training time to the whole epoch
        batches = len(loaders.train_loader)
        epoch_s = stats.seconds * batches / max(batches - resumed_at, 1) + time.monotonic() - eval_start
        _fit_to_budget(cfg, derived, ctx, progress, epoch, epoch_s, updates)
        record["planned_epochs"] = ctx.total_epochs
    is_best = reported.top1_acc > progress.max_accuracy or progress.best_epoch < 0
    if is_best:
        progress.max_accuracy, progress.best_epoch = reported.top1_acc, epoch
    record["max_accuracy"] = progress.max_accuracy
    log.info("Max accuracy: %.2f%% (epoch %d)", progress.max_accuracy, progress.best_epoch)
    ctx.metrics.write(record)
    last = epoch == ctx.total_epochs - 1
    stop_signal = ctx.stop() if ctx.stop is not None and not last else 0  # a signal during evaluation
    if (epoch + 1) % max(cfg.SAVE_FREQ, 1) == 0 or last or is_best or stop_signal:
        _save(cfg, info, derived, raw, ctx, state, progress, updates)
    if stop_signal:
        _log_stop(ctx, state, progress, stop_signal)
        return None
    return reported, used_ema


def _save_and_stop(cfg, info: DistInfo, derived: Derived, raw, ctx: TrainContext, state: TrainState,
                   progress: Progress, updates: int, signum: int, evaluated: bool = True) -> None:
    """A stop signal ended the epoch's training or its evaluation: save the checkpoint to resume from (mid-epoch,
    or the finished epoch without its evaluation), say so, and return None as `_one_epoch` does for a stop."""
    _save(cfg, info, derived, raw, ctx, state, progress, updates)
    _log_stop(ctx, state, progress, signum, evaluated)
    return None


def _fit_to_budget(cfg: CfgNode, derived: Derived, ctx: TrainContext, progress: Progress, epoch: int,
                   epoch_s: float, updates: int) -> None:
    """TRAIN.TIME_BUDGET: fix the run's length to the epochs that fit the time left, from rank 0's measurement of
    the epoch just finished (so every rank agrees), and the schedule over that length. The epochs so far were
    warmup (the config requires it), whose learning rates do not depend on the length."""
    budget_s = cfg.TRAIN.TIME_BUDGET * 60
    elapsed = time.monotonic() - progress.started
    min_epochs = math.ceil(cfg.TRAIN.WARMUP_EPOCHS) + 1
    epochs = broadcast_object(epochs_within_budget(budget_s, elapsed, epoch_s, epoch + 1, min_epochs, cfg.TRAIN.EPOCHS))
    progress.planned_epochs = ctx.total_epochs = epochs
    ctx.schedule = build_schedule(cfg, derived, updates, epochs)
    log.info("TRAIN.TIME_BUDGET %g min: an epoch takes %.0f s (training and evaluation), %.0f s of the budget are "
             "left, so the run trains %d of at most %d epochs", cfg.TRAIN.TIME_BUDGET, epoch_s,
             max(budget_s - elapsed, 0.0), epochs, cfg.TRAIN.EPOCHS)


def _save(cfg, info: DistInfo, derived: Derived, raw, ctx: TrainContext, state: TrainState, progress: Progress,
          updates: int) -> None:
    """Rank 0 writes the checkpoint (mid-epoch when state.epoch_batches > 0) and prunes old ones; a failure
    stops every rank with rank 0's message, so none is left waiting for it in a collective."""
    rng = gather_rng_states()  # every rank takes part; only rank 0 writes
    run_dir = derived.run_dir
    path = (ckpt_io.mid_epoch_checkpoint_path(run_dir, state.epoch, state.global_step) if state.epoch_batches
            else ckpt_io.checkpoint_path(run_dir, state.epoch))
    error = ""
    if info.is_main:
        try:
            ckpt_io.save_checkpoint(path, checkpoint_state(cfg, derived, raw, ctx.optimizer, ctx.scaler, ctx.ema,
                                                           state, progress, rng, updates))
        except ckpt_io.CheckpointError as e:
            error = str(e)
        except OSError as e:  # e.g. ENOSPC: atomic_write has already removed its partial file
            error = (f"Could not write checkpoint {path}: {e.strerror or e}. No partial file was left and the "
                     f"earlier checkpoints in {run_dir} are intact: make room (or fix permissions), then run the "
                     "same command again to resume from the newest one.")
    error = broadcast_object(error)
    if error:
        raise ckpt_io.CheckpointError(error)
    progress.last_checkpoint = path
    if info.is_main:
        log.info("saved %s", path)
        best = ckpt_io.checkpoint_path(run_dir, progress.best_epoch)
        try:
            ckpt_io.prune_checkpoints(run_dir, cfg.TRAIN.KEEP_LAST, keep={best})
        except OSError as e:  # never fatal: the new checkpoint is safe
            log.warning("Could not remove old checkpoints in %s: %s", run_dir, e)


def _log_stop(ctx: TrainContext, state: TrainState, progress: Progress, signum: int, evaluated: bool = True) -> None:
    where = f"part way through epoch {state.epoch}" if state.epoch_batches else f"after epoch {state.epoch}"
    if not evaluated:
        log.info("The stop signal came during epoch %d's evaluation: the epoch is saved, its evaluation is not.",
                 state.epoch)
    log.info("Stopping on %s (update %d, %s); saved %s. Run the same command again to resume from there.",
             signal_name(signum), state.global_step, where, progress.last_checkpoint)
    if ctx.metrics is not None:
        ctx.metrics.write({"kind": "stop", "epoch": state.epoch, "step": state.global_step,
                           "signal": signal_name(signum), "checkpoint": progress.last_checkpoint})
