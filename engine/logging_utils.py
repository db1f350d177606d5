"""Run logging: log.txt and the console, metrics.jsonl, TensorBoard scalars, progress with ETA.

(Named logging_utils, not logging, so `from engine import logging` can never shadow the standard library.)
Only rank 0 writes files; other ranks print warnings and errors to the console, prefixed with their rank.
Records logged with `extra=FILE_ONLY` (the resolved config, derived values) go to log.txt, not the console.
Warnings that every rank would give alike (about the config, the precision, the sampler) carry
`extra=ONCE_PER_JOB` (or the same dict literal, in packages below engine/): only rank 0 shows them.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
from typing import Any

import torch

log = logging.getLogger(__name__)

FILE_ONLY = {"file_only": True}  # pass as `extra=` for what belongs in log.txt only
ONCE_PER_JOB = {"once_per_job": True}  # pass as `extra=` for warnings every rank would give alike
_FORMAT = "[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


class _RunHandler(logging.Handler):
    """Marker mixin: handlers installed by setup_logging (removed by the next call)."""


class _RunStreamHandler(logging.StreamHandler, _RunHandler):
    pass


class _RunFileHandler(logging.FileHandler, _RunHandler):
    pass


def setup_logging(run_dir: str, rank: int) -> None:
    """Install the run's handlers on the root logger (replacing any a previous run installed)."""
    root = logging.getLogger()
    close_logging()
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] " + _FORMAT, datefmt=_DATEFMT)
    console = _RunStreamHandler(sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(fmt)
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    if rank != 0:
        console.addFilter(lambda record: not getattr(record, "once_per_job", False))
    root.addHandler(console)
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        file = _RunFileHandler(os.path.join(run_dir, "log.txt"), mode="a", encoding="utf-8")
        file.setLevel(logging.INFO)
        file.setFormatter(fmt)
        root.addHandler(file)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


def close_logging() -> None:
    """Remove and close the handlers setup_logging installed."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _RunHandler)]:
        root.removeHandler(h)
        h.close()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: allocated tensors on CUDA, resident set size elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    except ImportError:  # Windows
        return 0.0


def format_seconds(seconds: float) -> str:
    """H:MM:SS for a duration (or '?' when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _drop_records_after(path: str, step: int) -> list[dict]:
    """Rewrite metrics.jsonl without the records of updates after `step` (and without a torn last line); returns
    the records kept."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    keep, kept = [], []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if int(record.get("step", 0)) <= step:
            keep.append(line if line.endswith("\n") else line + "\n")
            kept.append(record)
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return kept


class MetricsWriter:
    """metrics.jsonl (one JSON object per line) and TensorBoard scalars; a no-op off rank 0."""

    def __init__(self, run_dir: str, enabled: bool, tensorboard: bool = True, resume_step: int | None = None) -> None:
        """`resume_step`: the run resumes after that update, so records of later updates (written before the
        stop or crash, and about to be written again) are dropped from metrics.jsonl, and TensorBoard gets one
        events file again: a new one, holding the kept records, replaces the earlier runs' files."""
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "metrics.jsonl")
        kept = _drop_records_after(path, resume_step) if resume_step is not None else []
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only where it is used

            earlier = [os.path.join(run_dir, n) for n in os.listdir(run_dir) if n.startswith("events.out.tfevents.")]
            self._tb = SummaryWriter(log_dir=run_dir)
            if resume_step is not None and earlier:
                for record in kept:  # what TensorBoard showed, up to the resumed update
                    self._mirror(record)
                self._tb.flush()
                for old in earlier:  # only now: a crash before this point leaves two files, never none
                    os.remove(old)
        self._jsonl = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append `record` (needs 'kind' and 'step') and mirror its numbers to TensorBoard as <kind>/<key>."""
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._jsonl.write(json.dumps(clean) + "\n")
        self._jsonl.flush()
        self._mirror(clean)
        if self._tb is not None and record["kind"] == "epoch":
            self._tb.flush()

    def _mirror(self, record: dict) -> None:
        if self._tb is None:
            return
        kind, step = record["kind"], int(record["step"])
        for key, value in record.items():
            if key not in ("kind", "step", "epoch") and _scalar(value):
                self._tb.add_scalar(f"{kind}/{key}", value, global_step=step)

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the files (safe to call twice)."""
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
