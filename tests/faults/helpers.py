"""Launching tiny real runs of main.py (one process or torchrun) and observing them from outside: wait for
training steps in metrics.jsonl, find the worker of a rank, signal it, compare checkpoints bit for bit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.engine.engine_helpers import TINY_SWIN
from tests.engine.test_resume import _assert_bitwise_equal as assert_bitwise_equal  # noqa: F401 (re-exported)
from tests.engine.test_resume import _descendants, _env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INJECT = os.path.join(REPO, "tests", "faults", "inject.py")
TIMEOUT = 120  # seconds any single run may take before a test fails

# Randomness on (drop path, mixup/cutmix, EMA) and accumulation 2, so an inexact resume shows in the weights.
RUN_OPTS = TINY_SWIN + [
    "DATA.DATASET", "synthetic", "DATA.SYNTHETIC_VAL_SIZE", "8", "DATA.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0",
    "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.ACCUMULATION_STEPS", "2", "PRINT_FREQ", "1", "DEVICE", "cpu",
    "MODEL.DROP_PATH_RATE", "0.1", "MODEL_EMA.ENABLE", "True", "MODEL_EMA.DECAY", "0.9", "TAG", "t",
]


def run_dir(output: str) -> str:
    return os.path.join(output, "swin_tiny_test", "t")


def main_cmd(output: str, *opts: str, procs: int = 1, fault: list[str] | None = None) -> list[str]:
    """`python main.py` (or torchrun with `procs` workers) on the tiny synthetic run; `fault` runs it through
    tests/faults/inject.py with those arguments first."""
    script = [INJECT, *fault, "--"] if fault else [os.path.join(REPO, "main.py")]
    launch = [sys.executable] + script
    if procs > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"] + script
    return launch + ["--output", output, "--opts", *RUN_OPTS, *opts]


def start(cmd: list[str], log_path: str) -> subprocess.Popen:
    """Start `cmd` in its own session (so the test can signal its whole process group), output to log_path."""
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT,
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
    for pid in _descendants(launcher.pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher.pid}")
