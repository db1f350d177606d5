"""Process group set-up from torchrun's environment, the few collectives the engine needs, and the stop
request that preemption signals raise.

Under `torchrun` the environment holds RANK, WORLD_SIZE and LOCAL_RANK; a plain `python main.py` has none of
them and runs as a single process without a process group. The backend follows the device: nccl on CUDA,
gloo on CPU. Nothing here is global: the caller keeps the returned `DistInfo`.

Preemption: SLURM sends SIGTERM (or SIGUSR1 ahead of a time limit, with `--signal`), torchrun forwards
SIGTERM to its workers. `StopRequest` turns either signal into a flag and nothing else; the training loop
asks `StopRequest.agreed()` after every optimizer update, a one-integer all_reduce(MAX) so that all ranks
stop after the same update even when only one of them got the signal. That all_reduce runs on CPU over
gloo (the default group under gloo, a side group under nccl), so it never waits for the GPU: the cost is one
host round trip per update, not a device sync: between local processes a small fraction of a millisecond, and
across nodes a ring of 2 x (ranks - 1) small TCP messages, so its cost grows with the number of ranks (not yet
measured on a cluster). The side group needs TCP between the nodes: GLOO_SOCKET_IFNAME names the interface
when the default route's does not reach the other nodes.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any, Callable

import torch
import torch.distributed as dist

from configs import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 or _initialized()


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"Environment variable {name}={value!r} is not an integer; launch with torchrun.") from None


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda:LOCAL_RANK when CUDA is available, else cpu; `cuda` -> cuda:LOCAL_RANK; else as given."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"DEVICE {spec!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"DEVICE {spec} was requested but CUDA is not available; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"DEVICE {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible to this process."
            )
    return device


def setup_distributed(device_spec: str = "auto", timeout_minutes: float = 30) -> DistInfo:
    """Read torchrun's environment, pick the device and start the process group (none when RANK is unset)."""
    rank = _env_int("RANK", -1)
    if rank < 0:
        return DistInfo(0, 1, 0, resolve_device(device_spec, 0))
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not _initialized():
        kwargs: dict[str, Any] = {}
        if device.type == "cuda":
            kwargs["device_id"] = device  # binds the communicator to this GPU up front
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=timeout_minutes), **kwargs
        )
    log.debug("process group: rank %d/%d local %d on %s (%s)", rank, world_size, local_rank, device, backend)
    return DistInfo(rank, world_size, local_rank, device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` in place over all ranks (no-op in a single process); returns it."""
    if _initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_batchnorm_statistics(model: torch.nn.Module) -> int:
    """Set every BatchNorm's running mean and variance to their mean over the ranks (in one all-reduce), so that
    evaluation on any number of processes and the checkpoint rank 0 writes see the same statistics; DDP leaves
    each rank its own (buffers are not synced per forward). Training is unaffected: BatchNorm normalizes training
    batches with their own statistics. Returns the number of layers averaged (0 in a single process)."""
    if not _initialized() or dist.get_world_size() == 1:
        return 0
    buffers = [b for m in model.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               and m.running_mean is not None for b in (m.running_mean, m.running_var)]
    if not buffers:
        return 0
    flat = torch.cat([b.detach().float().reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    with torch.no_grad():
        for b, new in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(new.view_as(b))
    return len(buffers) // 2


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] in a single process)."""
    if not _initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not _initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _initialized():
        dist.barrier()


def cleanup() -> None:
    """Tear the process group down, if one was started."""
    if _initialized():
        dist.destroy_process_group()


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` to finish (for timing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()


def peer_failure_message(error: BaseException, rank: int) -> str | None:
    """A one-paragraph explanation when `error` is a collective that failed because another process of the job
    died, hung past DIST_TIMEOUT or closed its connection; None for any other error (and outside a job)."""
    text = str(error).strip()
    dist_error = getattr(dist, "DistError", ())
    markers = ("gloo", "NCCL", "Connection closed by peer", "Connection reset by peer")  # gloo raises RuntimeError
    if not (isinstance(error, dist_error) or (_initialized() and any(m in text for m in markers))):
        return None
    first = text.splitlines()[0] if text else type(error).__name__
    return (f"Rank {rank} lost contact with the other processes of the job during a collective operation "
            f"({type(error).__name__}: {first}). Another rank has most likely died or hung: its own error (and "
            "torchrun's summary of the first failed rank) names the cause. Fix that, then run the same command "
            "again to resume from the newest checkpoint.")


# A rank that fails only because another one did waits this long before it exits (under torchrun).
PEER_GRACE_S = 10.0


def under_torchrun() -> bool:
    """Whether torchrun (torch.distributed.run) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def report_to_launcher(message: str) -> None:
    """Write `message` to the error file torchrun gives each worker (TORCHELASTIC_ERROR_FILE), in the format its
    closing summary reads: the summary's "Root Cause" then shows the message itself, the last thing the user
    reads, instead of "<N/A>". Nothing outside torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    data = {"message": {"message": message, "extraInfo": {"py_callstack": message, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
    except OSError:  # the summary then says <N/A>; the message is in the log either way
        pass


_received_stop = 0  # the last stop signal a StopRequest of this process took (0: none)


def defer_exit_under_torchrun() -> bool:
    """Wait PEER_GRACE_S before this failed rank exits, under torchrun; returns whether it should still report its
    error. torchrun names the first worker it sees exit with an error as the root cause and then stops the others
    (SIGTERM), so a rank waits (and reports after the wait, if it is still running) when its failure is most likely
    not the first: a collective that failed because another rank died, or an error on a rank other than 0, which
    rank 0 most often hits alike (a config, a checkpoint, a data set all ranks read): the job's error is then
    reported once, by the rank that failed first. A SIGTERM that came while the error unwound out of training was
    taken as a stop request, not as the end it asks for: such a rank ends at once, without a report.
    """
    if not under_torchrun():
        return True
    if _received_stop != signal.SIGTERM:
        time.sleep(PEER_GRACE_S)  # a SIGTERM now ends the process (the stop handlers are gone)
    return _received_stop != signal.SIGTERM


def signal_name(signum: int) -> str:
    """'SIGTERM' for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class StopRequest:
    """SIGTERM/SIGUSR1/SIGINT set a flag; `agreed()` tells every rank whether any rank got one.

    Ctrl-C (SIGINT) stops like a preemption: the update finishes and the checkpoint to resume from is written. A
    second Ctrl-C aborts at once (KeyboardInterrupt); one that comes within `REPEAT_S` of the first counts as the
    same request, since a rank may get one Ctrl-C twice: from the terminal (a plain `python main.py` and its
    workers share the terminal's process group) or SLURM, and from a launcher passing it on.
    Use as a context manager around training: the previous handlers come back on exit. Create it on every
    rank at the same point (under nccl it creates a gloo group, a collective).
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")
    REPEAT_S = 1.0

    def __init__(self, timeout_minutes: float = 30) -> None:
        self.received = 0  # number of the last stop signal this process got; 0: none
        global _received_stop
        _received_stop = 0
        self._first_interrupt = 0.0  # time.monotonic() of the first SIGINT
        self._previous: dict[int, Any] = {}
        self._shielded: list[Any] = []  # loaders whose workers ignore the stop signals
        self._group = None
        if _initialized() and dist.get_backend() != "gloo":
            # A CPU side group: agreeing on a CUDA tensor would read it back to the host, a device sync. Its
            # timeout is the job's (DIST_TIMEOUT), not gloo's default.
            self._group = dist.new_group(backend="gloo", timeout=timedelta(minutes=timeout_minutes))

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._first_interrupt and now - self._first_interrupt > self.REPEAT_S:
                raise KeyboardInterrupt  # the second Ctrl-C: abort without saving
            if not self._first_interrupt:
                self._first_interrupt = now
                if not _initialized() or dist.get_rank() == 0:  # every rank got it from the terminal: say it once
                    log.warning("Ctrl-C: stopping after this update and saving a checkpoint to resume from; "
                                "press Ctrl-C again to abort without saving.")
        self.received = signum  # only a flag: the training loop acts on it after the current update
        global _received_stop
        _received_stop = signum

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is not threading.main_thread():
            log.warning("Not on the main thread: SIGTERM/SIGUSR1/SIGINT will not stop training gracefully.")
            return self
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)  # Windows has no SIGUSR1
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        for loader in self._shielded:  # they ignore SIGTERM, so nothing else may end them after an error
            if hasattr(loader, "end_workers"):
                loader.end_workers()
        self._shielded.clear()

    def shield_workers(self, loader: Any) -> None:
        """Make the worker processes of a DataLoader (not yet iterated) ignore the stop signals.

        SLURM signals every process of a job step, and torch's loader workers die on SIGTERM, which fails the
        main process in the middle of its step; the main process shuts its workers down itself.
        """
        if getattr(loader, "num_workers", 0) > 0:
            loader.worker_init_fn = functools.partial(_ignore_stop_signals, loader.worker_init_fn)
            self._shielded.append(loader)  # leaving the context ends them (data.build.Loader.end_workers)

    def agreed(self) -> int:
        """The stop signal any rank received (0: none). A collective: every rank calls it at the same points."""
        if not _initialized():
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())


def _ignore_stop_signals(init_fn: Callable[[int], None] | None, worker_id: int) -> None:
    for name in StopRequest.SIGNALS:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    if init_fn is not None:
        init_fn(worker_id)
