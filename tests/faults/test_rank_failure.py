"""A rank that dies mid-training (SIGKILL, as the OOM killer does) must not leave the others hanging: with gloo
the survivor's next collective fails at once, it exits with one clear message instead of a traceback, and
torchrun ends the job with a non-zero code naming the dead rank, well within a minute."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.helpers import finish, main_cmd, rank_pid, run_dir, start, wait_for_step

pytestmark = pytest.mark.skipif(not os.path.exists("/proc"), reason="finds torchrun's workers through /proc")


def test_killed_rank_ends_the_job_quickly_with_a_clear_message(tmp_path):
    out, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    proc = start(main_cmd(out, "DATA.SYNTHETIC_TRAIN_SIZE", "256", "TRAIN.EPOCHS", "2", procs=2), log)
    wait_for_step(proc, run_dir(out), 2)
    killed = time.monotonic()
    os.kill(rank_pid(proc, 1), signal.SIGKILL)
    code, text = finish(proc, log, timeout=60)
    assert time.monotonic() - killed < 60
    assert code != 0
    assert "Rank 0 lost contact with the other processes of the job during a collective operation" in text
    assert "[rank0]: Traceback" not in text and "[rank0]:" not in text, text[-3000:]
    assert "exitcode  : -9" in text and "Signal 9 (SIGKILL) received by PID" in text  # torchrun names the dead rank
