"""`run(cfg)`: the whole job for one process -- set-up, then throughput, evaluation or training.

Works as one plain process (`python main.py ...`) and under torchrun unchanged. Training: build, resume
(MODEL.RESUME or the newest loadable checkpoint in the run directory), then per epoch: reseed, train,
evaluate (every EVAL_FREQ epochs and the last; the EMA too), log, checkpoint; finally eval.json + report.md.
Everything random in an epoch is a pure function of (SEED, rank, epoch), so a run resumed at an epoch boundary
ends bitwise equal to an uninterrupted one (same device, processes and workers).

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
import itertools
import json
import logging
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

import data
import models
from configs import ConfigError, Derived, derive, dump_config, train_dir, with_inputs_of, with_model_of
from engine import checkpoint as ckpt_io
from engine import report
from engine.amp import AmpPolicy, resolve_amp
from engine.distributed import (DistInfo, StopRequest, average_batchnorm_statistics, broadcast_object, cleanup,
                                defer_exit_under_torchrun, peer_failure_message, report_to_launcher, setup_distributed,
                                signal_name)
from engine.ema import build_ema
from engine.evaluate import EvalResult, evaluate
from engine.host import keep_freed_memory
from engine.logging_utils import FILE_ONLY, MetricsWriter, close_logging, setup_logging
from engine.optim import build_optimizer, build_schedule, steps_per_epoch, updates_within_budget
from engine.rng import epoch_seed, gather_rng_states, seed_everything
from engine.state import Run, checkpoint_state, restore_state, restore_weights_for_eval
from engine.throughput import measure_throughput
from engine.train import NonFiniteTrainingError, TrainContext, TrainState, build_criterion, train_one_epoch
from models.build import UnknownModelError
from models.weights import WeightsError, load_weights

log = logging.getLogger(__name__)

# DDP: buffers are not broadcast in every forward (each rank keeps its own BatchNorm statistics, as timm and the
# official release do; here they are averaged over the ranks before every evaluation and save); newer torch
# names the option forward_sync_buffers and deprecates broadcast_buffers
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


def run(cfg: CfgNode) -> int:
    """Run the job the frozen config describes; returns the process exit code."""
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if cfg.TRAIN.DETERMINISTIC:  # cuBLAS reads it when it creates its first handle: before any CUDA work
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        return _run(cfg, setup_distributed(cfg.DEVICE, cfg.DIST_TIMEOUT))
    except USER_ERRORS as e:
        message = user_message(e)
        # rank 0 most often fails alike: its report is then the one
        if int(os.environ.get("RANK", 0)) != 0 and not defer_exit_under_torchrun():
            report_to_launcher(message)  # ended by torchrun: its summary still holds this rank's error
            return 1
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
        if not defer_exit_under_torchrun():  # the rank that failed first exits first and reports
            return 1
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
    cfg, own_input = models.build.with_own_input_config(cfg)
    name, changes = models.run_name(cfg)
    run_dir = derive(cfg, info.world_size, model_name=name).run_dir
    setup_logging(run_dir, info.rank)
    if changes and info.is_main:
        log.warning("MODEL.NAME %s names a registered variant, but this config changes its architecture (%s): the "
                    "run goes by %s. Set MODEL.NAME to name it yourself.", cfg.MODEL.NAME, "; ".join(changes), name)
    if adopted and info.is_main:
        log.warning("Checkpoint %s holds another model than this config's; evaluating it with the model config saved "
                    "in it: %s.", cfg.MODEL.RESUME, ", ".join(adopted))
    if info.is_main:
        _log_official_no_ops(cfg)
    if own_input and info.is_main:
        log.info("input of %s as its pretrained config gives: %s", cfg.MODEL.NAME,
                 ", ".join(f"{k} {v}" for k, v in own_input.items()))
    _choose_kernels(cfg, info.device)
    if info.device.type == "cpu" and (kept := keep_freed_memory()) and info.is_main:
        log.info("%s: a CPU step frees and allocates its activations every update", kept)
    amp = resolve_amp(cfg, info.device)
    inference_only = bool(cfg.EVAL_MODE or cfg.THROUGHPUT_MODE)
    loaders = data.build_loaders(cfg, info.rank, info.world_size, info.device, eval_only=inference_only)
    derived = derive(cfg, info.world_size, loaders.num_classes, model_name=name)
    log.info("rank %d of %d on %s, precision %s (%s); run directory %s", info.rank, info.world_size, info.device,
             amp.dtype_name, amp.reason, run_dir)
    if info.is_main:
        _write_run_files(cfg, derived)
    model = _with_sync_batchnorm(models.build_model(cfg, info.device), cfg, info).to(info.device)
    log.info("model %s/%s: %s parameters", cfg.MODEL.TYPE, name,
             f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}")
    if cfg.THROUGHPUT_MODE:
        result = measure_throughput(model, loaders.val_loader, amp, prepare=loaders.val_prepare)
        with MetricsWriter(run_dir, info.is_main, tensorboard=False) as metrics:
            metrics.write({"kind": "throughput", "step": 0, **result.__dict__})
        return 0
    if cfg.EVAL_MODE:
        return _evaluate_only(cfg, info, derived, model, loaders, amp)
    return _train(cfg, info, derived, model, loaders, started)


# Official keys (and flags) of CUDA/apex kernels this project does not use: accepted, and said once to do nothing.
NO_EFFECT_KEYS = {"FUSED_WINDOW_PROCESS": "the official fused window-shift CUDA kernel (--fused_window_process)",
                  "FUSED_LAYERNORM": "apex's fused LayerNorm (--fused_layernorm)"}


def _log_official_no_ops(cfg: CfgNode) -> None:
    for key, what in NO_EFFECT_KEYS.items():
        if cfg[key]:
            log.warning("%s True asks for %s, which this project does not use: it has no effect here (the window "
                        "shift and LayerNorm run as torch ops, the attention kernel follows MODEL.SWIN.ATTN_IMPL).",
                        key, what)


def _with_sync_batchnorm(model: torch.nn.Module, cfg: CfgNode, info: DistInfo) -> torch.nn.Module:
    """MODEL.SYNC_BN: BatchNorm layers normalize training batches with the statistics of the whole batch over
    every rank. torch's SyncBatchNorm runs on CUDA only; off, in one process or without training nothing changes.
    timm's converter keeps the activation of timm's norm-and-activation layers (BatchNormAct2d), which torch's
    converter would drop."""
    if not cfg.MODEL.SYNC_BN or info.world_size == 1 or cfg.EVAL_MODE or cfg.THROUGHPUT_MODE:
        return model
    if info.device.type != "cuda":
        raise ConfigError(f"MODEL.SYNC_BN needs CUDA devices (torch's SyncBatchNorm does not run on "
                          f"{info.device.type}); set it False: each rank then keeps its own statistics, averaged over "
                          "the ranks before every evaluation and save.")
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def _model_of_checkpoint_to_evaluate(cfg: CfgNode) -> tuple[CfgNode, list[str]]:
    """--eval --resume of this project's checkpoint evaluates the model it holds: where the config's model keys
    (MODEL.TYPE, MODEL.SWIN.*, DATA.IMG_SIZE) differ from those saved in it, the saved ones (and its MODEL.NAME)
    replace them; the changed keys are returned for the log. The saved DATA.MEAN / DATA.STD / TEST.CROP_PCT fill
    those the config leaves empty. Anything else: the config unchanged."""
    if not (cfg.EVAL_MODE and cfg.MODEL.RESUME):
        return cfg, []
    saved = _saved_config(cfg.MODEL.RESUME)
    if saved is None:  # official, timm or other weights: the config decides the model
        return cfg, []
    adopted, changed = with_model_of(cfg, saved, cfg.MODEL.RESUME)
    if all(c.key == "MODEL.NAME" for c in changed):  # the same model under another name: keep this run's
        adopted, changed = cfg, []
    # and the inputs it was trained on where the config leaves them empty (not a change of model: not reported)
    return with_inputs_of(adopted, saved, cfg.MODEL.RESUME)[0], [str(c) for c in changed]


def _saved_config(path: str) -> str | None:
    """The config a checkpoint of this project holds (the YAML it was trained with); None for other weights. The
    tensors are only memory-mapped; a file that does not load is a CheckpointError naming it."""
    saved = ckpt_io.load_checkpoint(path, mmap=True).get("config")
    return saved if isinstance(saved, str) else None


def _is_own_checkpoint(path: str) -> bool:
    """Whether `path` is a checkpoint this project wrote (False too for a file load_checkpoint cannot read)."""
    try:
        return _saved_config(path) is not None
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
    result = evaluate(model, loaders.val_loader, amp, prepare=loaders.val_prepare)
    _log_eval("eval", result, len(loaders.val_set))
    if info.is_main:
        record = report.build_eval_record(cfg, model, result, source, used_ema,
                                          extra={"world_size": info.world_size, "amp_dtype": amp.dtype_name})
        report.write_eval_report(derived.run_dir, record)
    return 0


def _log_eval(name: str, r: EvalResult, expected: int) -> None:
    log.info("%s: Acc@1 %.3f Acc@5 %.3f loss %.4f on %d images", name, r.top1_acc, r.top5_acc, r.loss, r.num_images)
    if r.num_images != expected:
        raise RuntimeError(f"evaluated {r.num_images} images but the validation set has {expected}")


def _train(cfg: CfgNode, info: DistInfo, derived: Derived, model, loaders, started: float) -> int:
    """Build the run, resume it (MODEL.RESUME or the run directory's newest checkpoint), train its epochs."""
    if info.is_main:
        ckpt_io.remove_stale_temp_files(derived.run_dir)
    resume = _resume_path(cfg, info, derived.run_dir)
    _initial_weights(cfg, info, derived, model, resume)
    run = _build_run(cfg, info, derived, model, loaders)
    if resume:
        run.state, run.progress = restore_state(ckpt_io.load_checkpoint(resume), resume, run)
        where = (f"epoch {run.state.epoch} after {run.state.epoch_batches} of {run.batches} micro-batches"
                 if run.state.epoch_batches else f"epoch {run.state.epoch - 1}")
        log.info("resumed from %s (%s, step %d)", resume, where, run.state.global_step)
    run.progress.started = started
    if run.progress.planned_updates:  # the length TRAIN.TIME_BUDGET fixed before the run was stopped
        _set_length(run, run.progress.planned_updates)
    resume_step = run.state.global_step if resume else None
    with (StopRequest(cfg.DIST_TIMEOUT) as stop,
          MetricsWriter(derived.run_dir, info.is_main, resume_step=resume_step) as metrics):
        stop.shield_workers(loaders.train_loader)
        stop.shield_workers(loaders.val_loader)
        run.train.metrics, run.train.stop = metrics, stop.agreed
        return _train_epochs(run)


def _initial_weights(cfg: CfgNode, info: DistInfo, derived: Derived, model, resume: str) -> None:
    """MODEL.PRETRAINED when the run does not resume; the warning for a learning rate scaled too low."""
    if cfg.MODEL.PRETRAINED and not resume:
        load_weights(model, cfg.MODEL.PRETRAINED, mode="finetune")  # logs what it loaded, resized, remapped
    elif cfg.MODEL.PRETRAINED:
        log.info("MODEL.PRETRAINED is ignored: resuming from %s", resume)
    if info.is_main and derived.total_batch < 32:
        log.warning("Linear LR scaling: TRAIN.BASE_LR %g is per 512 images, so %d images per update train at %.2e, "
                    "where little may be learned; raise --batch-size or --accumulation-steps, or set TRAIN.BASE_LR "
                    "(and WARMUP_LR, MIN_LR) %dx higher to train at the rate of 512 images per update.",
                    cfg.TRAIN.BASE_LR, derived.total_batch, derived.base_lr, round(512 / derived.total_batch))


def _build_run(cfg: CfgNode, info: DistInfo, derived: Derived, raw, loaders) -> Run:
    """The optimizer, the DDP/compile wrapping, the EMA, the scaler and the update step's context, from TRAIN.*;
    the schedule, the metrics writer and the stop check are set once the run's length and files are known."""
    amp = resolve_amp(cfg, info.device)  # the precision _run logged (a pure function of the config and device)
    optimizer = build_optimizer(cfg, raw, derived.base_lr, info.device)
    model = raw
    if info.world_size > 1:  # also broadcasts rank 0's weights, so build the EMA after this
        model = DistributedDataParallel(
            raw, device_ids=[info.device.index] if info.device.type == "cuda" else None, **_NO_BUFFER_SYNC
        )
    ema = build_ema(cfg, raw)
    if cfg.TRAIN.COMPILE:
        model = torch.compile(model)
    batches = len(loaders.train_loader)
    updates = steps_per_epoch(batches, cfg.TRAIN.ACCUMULATION_STEPS)
    train = TrainContext(
        optimizer=optimizer, schedule=build_schedule(cfg, derived, updates, cfg.TRAIN.EPOCHS),
        criterion=build_criterion(cfg, loaders.mixup_fn is not None),
        amp=amp, device=info.device, ema_source=raw, accumulation_steps=cfg.TRAIN.ACCUMULATION_STEPS,
        clip_grad=cfg.TRAIN.CLIP_GRAD, scaler=amp.make_scaler(), ema=ema, mixup_fn=loaders.mixup_fn,
        prepare=loaders.train_prepare, print_freq=cfg.PRINT_FREQ, max_bad_steps=cfg.TRAIN.MAX_BAD_STEPS,
        total_epochs=cfg.TRAIN.EPOCHS, world_size=info.world_size,
    )
    state = TrainState(epoch=cfg.TRAIN.START_EPOCH, global_step=cfg.TRAIN.START_EPOCH * updates)
    return Run(cfg=cfg, info=info, derived=derived, model=model, raw=raw, train=train, batches=batches,
               updates=updates, loaders=loaders, state=state)


def _train_epochs(run: Run) -> int:
    """The epoch loop, then the final report; returns the exit code."""
    cfg, derived, train, state = run.cfg, run.derived, run.train, run.state
    report_path = os.path.join(derived.run_dir, "eval.json")
    if state.epoch >= train.total_epochs and os.path.exists(report_path):
        log.info("%s has finished all %d epochs and written %s: nothing to do. Train again under another --tag, or "
                 "evaluate a checkpoint with --eval --resume CHECKPOINT.", derived.run_dir, train.total_epochs,
                 report_path)
        return 0
    budget = (f" (at most: TRAIN.TIME_BUDGET {cfg.TRAIN.TIME_BUDGET:g} min fixes the number after the first epoch)"
              if cfg.TRAIN.TIME_BUDGET > 0 and not run.progress.planned_updates else "")
    log.info("start training: epochs %d-%d%s, %d updates per epoch, total batch %d, lr %.3e",
             state.epoch, train.total_epochs - 1, budget, run.updates, derived.total_batch, derived.base_lr)
    final: tuple[EvalResult | None, bool] | None = None
    epoch = state.epoch
    while epoch < train.total_epochs:  # TRAIN.TIME_BUDGET may lower total_epochs after the first epoch
        state.epoch = epoch
        final = _one_epoch(run)
        if final is None:  # stopped by a signal; the checkpoint to resume from is written
            return 0
        epoch += 1
    if final is None or final[0] is None:  # resumed after the last epoch: evaluate what was restored
        use_ema = bool(cfg.TEST.USE_EMA and train.ema is not None)
        final = (_evaluate(run, train.ema.module if use_ema else run.raw, stoppable=False), use_ema)
    if run.info.is_main:
        _write_final_report(run, *final)
    return 0


def _evaluate(run: Run, model, stoppable: bool = True) -> EvalResult | None:
    """Evaluate `model` on the validation set (None: a stop signal came part way, when `stoppable`)."""
    loaders = run.loaders
    average_batchnorm_statistics(model)  # every rank evaluates with the same BatchNorm statistics
    return evaluate(model, loaders.val_loader, run.train.amp, prepare=loaders.val_prepare,
                    stop=run.train.stop if stoppable else None)


def _write_final_report(run: Run, result: EvalResult, used_ema: bool) -> None:
    model = run.train.ema.module if used_ema else run.raw
    record = report.build_eval_record(
        run.cfg, model, result, run.progress.last_checkpoint, used_ema,
        extra={"world_size": run.info.world_size, "amp_dtype": run.train.amp.dtype_name,
               "epochs": run.train.total_epochs, "updates": run.state.global_step,
               "max_accuracy": run.progress.max_accuracy,
               "best_epoch": run.progress.best_epoch},
    )
    report.write_eval_report(run.derived.run_dir, record)


def _one_epoch(run: Run) -> tuple[EvalResult | None, bool] | None:
    """Train, evaluate (when `_evaluates`), record and checkpoint one epoch; returns the evaluation the report
    would use and whether it is the EMA's ((None, False) for an epoch without evaluation), or None when a stop
    signal ended the run (after saving the checkpoint to resume from)."""
    cfg, train, state, progress, loaders = run.cfg, run.train, run.state, run.progress, run.loaders
    epoch, resumed_at = state.epoch, state.epoch_batches
    # Train: each epoch's randomness is a pure function of (SEED, rank, epoch); resuming mid-epoch, the
    # checkpoint restored the RNG states of that moment instead.
    if not state.epoch_batches:
        seed_everything(epoch_seed(cfg.SEED, run.info.rank, epoch))
    loaders.train_sampler.set_epoch(epoch, start_index=state.epoch_batches * cfg.DATA.BATCH_SIZE)
    stats = train_one_epoch(run.model, _epoch_batches(run), train, state)
    eval_start = time.monotonic()
    if stats.stop_signal:
        return _save_and_stop(run, stats.stop_signal)
    # Evaluate the weights, then the EMA; a stop signal ends either early.
    record = {"kind": "epoch", "epoch": epoch, "step": state.global_step, "train_loss": stats.loss}
    planning = cfg.TRAIN.TIME_BUDGET > 0 and not progress.planned_updates
    reported: tuple[EvalResult | None, bool] = (None, False)
    if planning or _evaluates(run, epoch):
        reported = _evaluate_epoch(run, record)
        if reported is None:
            return _save_and_stop(run, train.stop(), evaluated=False)
    record.update({"skipped": stats.skipped, "epoch_s": stats.seconds})
    # The run's length under TRAIN.TIME_BUDGET, fixed after the first epoch.
    if planning:
        # a resumed epoch trained only part of its batches: scale its training time to the whole epoch
        train_s = stats.seconds * run.batches / max(run.batches - resumed_at, 1)
        _fit_to_budget(run, train_s, time.monotonic() - eval_start)
        record.update(planned_epochs=train.total_epochs, planned_updates=progress.planned_updates)
    # Record, then checkpoint (every SAVE_FREQ epochs, the last, the best, and before a stop).
    result = reported[0]
    is_best = result is not None and (result.top1_acc > progress.max_accuracy or progress.best_epoch < 0)
    if is_best:
        progress.max_accuracy, progress.best_epoch = result.top1_acc, epoch
    if result is not None:
        record["max_accuracy"] = progress.max_accuracy
        log.info("Max accuracy: %.2f%% (epoch %d)", progress.max_accuracy, progress.best_epoch)
    train.metrics.write(record)
    last = epoch == train.total_epochs - 1
    stop_signal = train.stop() if train.stop is not None and not last else 0  # a signal during evaluation
    if (epoch + 1) % max(cfg.SAVE_FREQ, 1) == 0 or last or is_best or stop_signal:
        _save(run)
    if stop_signal:
        _log_stop(run, stop_signal)
        return None
    return reported


def _evaluates(run: Run, epoch: int) -> bool:
    """Whether `epoch` ends with an evaluation: every EVAL_FREQ-th epoch and the last (the first, too, under
    TRAIN.TIME_BUDGET, which measures it: see `_one_epoch`)."""
    every = run.cfg.EVAL_FREQ
    return epoch == run.train.total_epochs - 1 or (every > 0 and (epoch + 1) % every == 0)


def _evaluate_epoch(run: Run, record: dict) -> tuple[EvalResult, bool] | None:
    """Evaluate the epoch's weights and, with an EMA, its weights too, adding the results to `record`; returns
    the evaluation the run reports (the EMA's under TEST.USE_EMA) and whether it is the EMA's, or None when a
    stop signal came during evaluation."""
    expected = len(run.loaders.val_set)
    result = _evaluate(run, run.raw)
    if result is None:
        return None
    _log_eval(f"epoch {record['epoch']}", result, expected)
    record.update(_eval_fields(result))
    if run.train.ema is None:
        return result, False
    ema_result = _evaluate(run, run.train.ema.module)
    if ema_result is None:
        return None
    _log_eval(f"epoch {record['epoch']} EMA", ema_result, expected)
    record.update(_eval_fields(ema_result, "ema_"))
    return (ema_result, True) if run.cfg.TEST.USE_EMA else (result, False)


def _eval_fields(result: EvalResult, prefix: str = "") -> dict:
    """An evaluation's metrics.jsonl fields: val_loss, top1_acc, top1_err, top5_acc, top5_err (with `prefix`)."""
    values = {"val_loss": result.loss, "top1_acc": result.top1_acc, "top1_err": result.top1_err,
              "top5_acc": result.top5_acc, "top5_err": result.top5_err}
    return {prefix + key: value for key, value in values.items()}


def _save_and_stop(run: Run, signum: int, evaluated: bool = True) -> None:
    """A stop signal ended the epoch's training or its evaluation: save the checkpoint to resume from (mid-epoch,
    or the finished epoch without its evaluation), say so, and return None as `_one_epoch` does for a stop."""
    _save(run)
    _log_stop(run, signum, evaluated)
    return None


def _fit_to_budget(run: Run, train_s: float, eval_s: float) -> None:
    """TRAIN.TIME_BUDGET: fix the run's length to the updates that fit the time left, from rank 0's measurement of
    the epoch just finished (`train_s` of training, `eval_s` of evaluation; rank 0's, so every rank agrees): whole
    epochs, then possibly a shorter last one, and the schedule over that length. The first epoch's learning rates
    did not depend on the length: its decay starts after it (engine.optim.build_schedule)."""
    cfg, progress = run.cfg, run.progress
    budget_s = cfg.TRAIN.TIME_BUDGET * 60
    left = budget_s - (time.monotonic() - progress.started)
    min_epochs = max(math.ceil(cfg.TRAIN.WARMUP_EPOCHS), 1) + 1
    updates = broadcast_object(updates_within_budget(left, (train_s, eval_s), run.updates, run.state.epoch + 1,
                                                     (min_epochs, cfg.TRAIN.EPOCHS), cfg.EVAL_FREQ))
    progress.planned_updates = updates
    _set_length(run, updates)
    whole, part = divmod(updates, run.updates)
    length = f"{whole} epochs and {part} of {run.updates} updates of one more" if part else f"{whole} epochs"
    log.info("TRAIN.TIME_BUDGET %g min: an epoch takes %.0f s of training and %.0f s of evaluation, %.0f s of the "
             "budget are left, so the run trains %s (at most %d epochs)", cfg.TRAIN.TIME_BUDGET, train_s, eval_s,
             max(left, 0.0), length, cfg.TRAIN.EPOCHS)


def _set_length(run: Run, updates: int) -> None:
    """Train `updates` optimizer updates in all (the last epoch shorter when they end part way through one), with
    the learning-rate schedule over that length."""
    run.train.total_epochs = math.ceil(updates / run.updates)
    run.train.schedule = build_schedule(run.cfg, run.derived, run.updates, total_updates=updates)


def _epoch_batches(run: Run):
    """The training loader of the epoch, cut short when the run's planned length ends part way through it."""
    loader, planned = run.loaders.train_loader, run.progress.planned_updates
    left = planned - run.state.epoch * run.updates if planned else run.updates
    if left >= run.updates:
        return loader
    return FirstBatches(loader, left * run.cfg.TRAIN.ACCUMULATION_STEPS - run.state.epoch_batches)


class FirstBatches:
    """The first `count` batches of `loader` (a sized iterable, as train_one_epoch needs)."""

    def __init__(self, loader, count: int) -> None:
        self.loader, self.count = loader, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.count)


def _save(run: Run) -> None:
    """Rank 0 writes the checkpoint (mid-epoch when state.epoch_batches > 0) and prunes old ones; a failure
    stops every rank with rank 0's message, so none is left waiting for it in a collective."""
    rng = gather_rng_states()  # every rank takes part; only rank 0 writes
    for model in (run.raw, run.train.ema.module if run.train.ema is not None else None):
        if model is not None:
            average_batchnorm_statistics(model)  # the checkpoint holds the ranks' mean, not rank 0's own
    run_dir, state, progress = run.derived.run_dir, run.state, run.progress
    path = (ckpt_io.mid_epoch_checkpoint_path(run_dir, state.epoch, state.global_step) if state.epoch_batches
            else ckpt_io.checkpoint_path(run_dir, state.epoch))
    error = ""
    if run.info.is_main:
        try:
            ckpt_io.save_checkpoint(path, checkpoint_state(run, rng))
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
    if run.info.is_main:
        log.info("saved %s", path)
        best = ckpt_io.checkpoint_path(run_dir, progress.best_epoch)
        try:
            ckpt_io.prune_checkpoints(run_dir, run.cfg.TRAIN.KEEP_LAST, keep={best})
        except OSError as e:  # never fatal: the new checkpoint is safe
            log.warning("Could not remove old checkpoints in %s: %s", run_dir, e)


def _log_stop(run: Run, signum: int, evaluated: bool = True) -> None:
    state, checkpoint = run.state, run.progress.last_checkpoint
    where = f"part way through epoch {state.epoch}" if state.epoch_batches else f"after epoch {state.epoch}"
    if not evaluated:
        log.info("The stop signal came during epoch %d's evaluation: the epoch is saved, its evaluation is not.",
                 state.epoch)
    log.info("Stopping on %s (update %d, %s); saved %s. Run the same command again to resume from there.",
             signal_name(signum), state.global_step, where, checkpoint)
    if run.train.metrics is not None:
        run.train.metrics.write({"kind": "stop", "epoch": state.epoch, "step": state.global_step,
                                 "signal": signal_name(signum), "checkpoint": checkpoint})
