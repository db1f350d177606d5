"""A rank that dies mid-training (SIGKILL, as the OOM killer does) must not leave the others hanging: with gloo
the survivor's next collective fails at once. Under torchrun the job ends well within a minute, and torchrun's
summary names the dead rank as the root cause (the survivor, which waits a moment before exiting, is stopped by
torchrun without a traceback). Launched without torchrun (RANK/WORLD_SIZE set by another launcher), the survivor
exits at once with one clear message instead of a traceback."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers.processes import REPO, RUN_OPTS, finish, main_cmd, rank_pid, run_dir, start, wait_for_step

pytestmark = pytest.mark.skipif(not os.path.exists("/proc"), reason="finds torchrun's workers through /proc")


def test_killed_rank_ends_a_torchrun_job_quickly_naming_the_dead_rank(tmp_path):
    out, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    proc = start(main_cmd(out, "DATA.SYNTHETIC_TRAIN_SIZE", "256", "TRAIN.EPOCHS", "2", procs=2), log)
    wait_for_step(proc, run_dir(out), 2)
    killed = time.monotonic()
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    code, text = finish(proc, log, timeout=60)
    assert time.monotonic() - killed < 60
    assert code != 0
    root_cause = text[text.index("Root Cause (first observed failure):"):]
    assert "rank      : 1 (local_rank: 1)" in root_cause and "exitcode  : -9" in root_cause, text[-3000:]
    assert "[rank0]:" not in text and text.count("Traceback (most recent call last)") == 1, text[-3000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_without_torchrun_the_survivor_of_a_killed_rank_exits_with_one_clear_message(tmp_path):
    out = str(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, os.path.join(REPO, "main.py"), "--output", out, "--opts", *RUN_OPTS,
           "DATA.SYNTHETIC_TRAIN_SIZE", "256", "TRAIN.EPOCHS", "2"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        wait_for_step(procs[0], run_dir(out), 2)
        killed = time.monotonic()
        procs[1].kill()
        text, _ = procs[0].communicate(timeout=60)
        assert time.monotonic() - killed < 30  # no grace period outside torchrun
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 1
    assert "Rank 0 lost contact with the other processes of the job during a collective operation" in text
    assert "Traceback" not in text, text[-3000:]
