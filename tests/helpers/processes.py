"""Launching real runs of main.py (one process or torchrun) and observing them from outside: run commands, wait
for training steps in metrics.jsonl, find the worker of a rank, signal it, read metrics.jsonl records, compare
checkpoints bit for bit, and write a malicious checkpoint for the loaders to refuse."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
from torch.distributed.run import get_args_parser

from scripts.launch import child_processes
from tests.helpers.engine import TINY_SWIN

# scripts/launch.py stops cleanly where torchrun lets it take the stop signals (--signals-to-handle, torch >= 2.9)
CLEAN_LAUNCH = "signals_to_handle" in vars(get_args_parser().parse_args(["main.py"]))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INJECT = os.path.join(REPO, "tests", "faults", "inject.py")
LAUNCHERS = {"torchrun": [sys.executable, "-m", "torch.distributed.run"],
             "launch": [sys.executable, os.path.join(REPO, "scripts", "launch.py")]}
TIMEOUT = 120  # seconds any single run of the fault tests may take before a test fails

# Randomness on (drop path, mixup/cutmix, EMA) and accumulation 2, so an inexact resume shows in the weights.
RUN_OPTS = TINY_SWIN + [
    "DATA.DATASET", "synthetic", "DATA.SYNTHETIC_VAL_SIZE", "8", "DATA.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0",
    "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.ACCUMULATION_STEPS", "2", "PRINT_FREQ", "1", "DEVICE", "cpu",
    "MODEL.DROP_PATH_RATE", "0.1", "MODEL_EMA.ENABLE", "True", "MODEL_EMA.DECAY", "0.9", "TAG", "t",
]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def run_all(cmds: list[list[str]], timeout: float = 300) -> list[tuple[int, str]]:
    """Run commands concurrently; [(exit code, stdout + stderr)] in order."""
    procs = [subprocess.Popen(c, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in cmds]
    results = []
    for p in procs:  # a process blocked on a full pipe just waits until its turn comes
        out, _ = p.communicate(timeout=timeout)
        results.append((p.returncode, out))
    return results


def alive(pid: int, group: bool = False) -> bool:
    """Whether process `pid` (with `group`: any process of the group `pid` leads) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    return True


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun's workers, their DataLoader workers)."""
    found, todo = [], [pid]
    while todo:
        for child in child_processes(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def tensors(path: str) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    for idx, s in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{idx}.{k}": v for k, v in s.items() if isinstance(v, torch.Tensor)})
    return out


def assert_bitwise_equal(a: str, b: str) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:5]}"


class _Malicious:
    """Unpickling this would create a marker file: proof that code in a checkpoint ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_checkpoint(path, marker, zip_format: bool = True) -> None:
    """A checkpoint whose unpickling would create `marker` (for the checkpoint, end-to-end and script tests)."""
    payload = {"model": {"w": torch.ones(1)}, "epoch": 0, "payload": _Malicious(str(marker))}
    torch.save(payload, str(path), _use_new_zipfile_serialization=zip_format)


def records(directory: str, kind: str | None = None) -> list[dict]:
    """The records of directory/metrics.jsonl, in order; only those of `kind` when given."""
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if kind is None or r["kind"] == kind]


def run_dir(output: str) -> str:
    return os.path.join(output, "swin_tiny_test", "t")


def main_cmd(output: str, *opts: str, procs: int = 1, fault: list[str] | None = None,
             launcher: str = "torchrun") -> list[str]:
    """`python main.py` (or, with `procs` workers, torchrun or scripts/launch.py: `launcher`) on the
    tiny synthetic run; `fault` runs it through tests/faults/inject.py with those arguments first."""
    script = [INJECT, *fault, "--"] if fault else [os.path.join(REPO, "main.py")]
    launch = [sys.executable] + script
    if procs > 1:
        launch = LAUNCHERS[launcher] + ["--standalone", f"--nproc_per_node={procs}"] + script
    return launch + ["--output", output, "--opts", *RUN_OPTS, *opts]


def start(cmd: list[str], log_path: str) -> subprocess.Popen:
    """Start `cmd` in its own session (so the test can signal its whole process group), output to log_path."""
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(proc: subprocess.Popen, log_path: str, timeout: float = TIMEOUT) -> tuple[int, str]:
    """Wait for the run (killing its process group if it overruns); returns (exit code, output)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{proc.args} did not finish within {timeout} s:\n{_read(log_path)[-3000:]}")
    return proc.returncode, _read(log_path)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _steps(directory: str) -> list[dict]:
    try:
        with open(os.path.join(directory, "metrics.jsonl")) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return []
    return [r for r in (json.loads(line) for line in lines if line.endswith("\n")) if r["kind"] == "step"]


def wait_for_step(proc: subprocess.Popen | None, directory: str, min_step: int, timeout: float = TIMEOUT) -> dict:
    """Poll metrics.jsonl until a training step >= min_step is recorded; returns that record. Fails if the
    run (`proc`, when given) ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in _steps(directory) if r["step"] >= min_step]
        if found:
            return found[0]
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before step {min_step}")
        time.sleep(0.02)  # polling interval, not a synchronisation: the loop waits for the file's content
    raise AssertionError(f"no step >= {min_step} in {directory}/metrics.jsonl within {timeout} s")


def rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process for `rank`."""
    for pid in descendants(launcher.pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher.pid}")
