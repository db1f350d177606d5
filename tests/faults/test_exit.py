"""Every exit path ends every process: an error raised while DataLoader workers live (workers that ignore
SIGTERM, as preemption needs) ends the run, and no process of it is left (a watchdog fails the test)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from engine.distributed import StopRequest
from tests.faults.inject import MARKER
from tests.helpers.processes import CLEAN_LAUNCH, INJECT, LAUNCHERS, REPO, RUN_OPTS, TIMEOUT, alive, run_dir, wait_for_step

WATCHDOG_S = 60  # a process still alive this long after the error fails the test


def _image_folder(root) -> str:
    """root/{train,val}/<class>/*.JPEG with one truncated JPEG among the training images."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 2)):
        for c in ("n01", "n02"):
            os.makedirs(os.path.join(root, split, c))
            for i in range(n):
                arr = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(root, split, c, f"{c}_{i}.JPEG"), quality=90)
    bad = os.path.join(root, "train", "n02", "n02_5.JPEG")
    with open(bad, "rb") as f:
        head = f.read(300)
    with open(bad, "wb") as f:
        f.write(head)
    return bad


def _launch(cmd: list[str], log_path: str) -> subprocess.Popen:
    """Start `cmd` in its own process group (as a terminal would), output to log_path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _end(proc: subprocess.Popen, log_path: str) -> tuple[int, str]:
    """(exit code, output) once `proc` exited and no process of its group is left, failing the test if one
    outlives the launcher by WATCHDOG_S."""
    try:
        proc.wait(timeout=WATCHDOG_S + 60)
        deadline = time.monotonic() + WATCHDOG_S
        while alive(proc.pid, group=True) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling the process table, not a synchronisation
        assert not alive(proc.pid, group=True), "a worker of the run outlived it"
    except subprocess.TimeoutExpired:
        raise AssertionError("the run did not exit") from None
    finally:
        if alive(proc.pid, group=True):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with open(log_path, errors="replace") as f:
        return proc.returncode, f.read()


def _run_to_the_end(cmd: list[str], tmp_path) -> tuple[int, str]:
    log_path = str(tmp_path / "run.log")
    return _end(_launch(cmd, log_path), log_path)


def _launcher(kind: str, script: list[str] | None = None) -> list[str]:
    """`python main.py`, or torchrun / scripts/launch.py with 2 ranks; `script` replaces main.py."""
    script = script or [os.path.join(REPO, "main.py")]
    if kind in LAUNCHERS:
        return LAUNCHERS[kind] + ["--standalone", "--nproc_per_node=2", *script]
    return [sys.executable, *script]


def _opts(tmp_path, workers: int) -> list[str]:
    return ["--output", str(tmp_path / "out"), "--opts", *RUN_OPTS, "DATA.DATASET", "imagenet",
            "DATA.DATA_PATH", str(tmp_path / "data"), "MODEL.NUM_CLASSES", "2", "DATA.NUM_WORKERS", str(workers),
            "TRAIN.EPOCHS", "2"]


@pytest.mark.parametrize("workers", [0, 1])  # and 8 under the launchers below
def test_a_data_error_with_live_workers_ends_every_process(tmp_path, workers):
    bad = _image_folder(str(tmp_path / "data"))
    code, out = _run_to_the_end(_launcher("python") + _opts(tmp_path, workers), tmp_path)
    assert code == 1, out[-3000:]
    assert os.path.basename(bad) in out, out[-3000:]


def test_under_torchrun_the_rank_that_failed_is_named_with_its_error_last(tmp_path):
    """One rank reads the truncated image; the other fails in its next collective. torchrun's closing summary
    must name the rank that read the file, with its message, and no process may be left: with 8 workers a rank,
    through scripts/launch.py, which reports a rank's failure exactly as torchrun does (torchrun's own summary; the
    every-rank error below runs plain torchrun)."""
    bad = _image_folder(str(tmp_path / "data"))
    code, out = _run_to_the_end(_launcher("launch") + _opts(tmp_path, 8), tmp_path)
    assert code == 1, out[-3000:]
    failed = [line for line in out.splitlines() if "CorruptImageError" in line or os.path.basename(bad) in line]
    assert failed, out[-3000:]
    rank = 1 if failed[0].startswith("[rank 1]") else 0  # rank 0's console lines carry no prefix
    summary = out[out.index("Root Cause (first observed failure):"):]
    assert f"rank      : {rank} (local_rank: {rank})" in summary, out[-3000:]
    assert os.path.basename(bad) in summary.split("error_file")[1], summary  # the message itself, not <N/A>
    assert "lost contact" not in out, out[-3000:]  # the other rank was stopped before it said anything
    assert out.count("Traceback (most recent call last)") == 1, out[-5000:]  # torchrun's own, with the summary


def test_under_torchrun_an_error_every_rank_hits_is_reported_once(tmp_path):
    missing = str(tmp_path / "missing.pth")
    cmd = _launcher("torchrun") + ["--output", str(tmp_path / "out"), "--resume", missing, "--opts", *RUN_OPTS,
                                   "DATA.DATASET", "synthetic"]
    code, out = _run_to_the_end(cmd, tmp_path)
    assert code == 1, out[-3000:]
    before_summary, summary = out.split("Root Cause (first observed failure):")
    assert before_summary.count(f"Checkpoint {missing} does not exist") == 1, out[-3000:]  # rank 0's line only
    assert "rank      : 0 (local_rank: 0)" in summary and f"Checkpoint {missing} does not exist" in summary


SYNTHETIC_8_WORKERS = ["DATA.DATASET", "synthetic", "DATA.SYNTHETIC_TRAIN_SIZE", "512", "DATA.NUM_WORKERS", "8",
                       "TRAIN.EPOCHS", "2"]


def test_a_diverged_run_with_eight_workers_ends_every_process(tmp_path):
    """Under torchrun (plain python with live workers: the data-error test above)."""
    cmd = _launcher("torchrun") + ["--output", str(tmp_path / "out"), "--opts", *RUN_OPTS, *SYNTHETIC_8_WORKERS,
                                 "TRAIN.BASE_LR", "1e30", "TRAIN.CLIP_GRAD", "0.0", "TRAIN.MAX_BAD_STEPS", "2"]
    code, out = _run_to_the_end(cmd, tmp_path)
    assert code == 1, out[-3000:]
    assert "The run has diverged" in out, out[-3000:]


@pytest.mark.parametrize("launcher, signum", [("python", signal.SIGINT), ("launch", signal.SIGTERM)])
def test_a_stop_with_eight_workers_saves_and_ends_every_process(tmp_path, launcher, signum):
    """Ctrl-C to plain python, or SIGTERM to the launcher alone: saved, exit 0, nothing left. (Plain torchrun exits
    1 on a signal it got itself, after the same save: README.)"""
    if launcher == "launch" and not CLEAN_LAUNCH:
        pytest.skip("scripts/launch.py needs torchrun's --signals-to-handle (torch >= 2.9)")
    out_dir = str(tmp_path / "out")
    cmd = _launcher(launcher) + ["--output", out_dir, "--opts", *RUN_OPTS, *SYNTHETIC_8_WORKERS]
    log_path = str(tmp_path / "run.log")
    proc = _launch(cmd, log_path)
    wait_for_step(proc, run_dir(out_dir), 3)
    if signum == signal.SIGINT:  # a terminal's Ctrl-C: the launcher's process group (torchrun's ranks have their own)
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    code, out = _end(proc, log_path)
    assert code == 0 and "Traceback" not in out, out[-3000:]
    assert "part way through epoch 0); saved" in out, out[-3000:]


@pytest.mark.skipif(not CLEAN_LAUNCH, reason="scripts/launch.py needs torchrun's --signals-to-handle (torch >= 2.9)")
def test_a_second_ctrl_c_to_launch_py_aborts_the_save_in_one_line(tmp_path):
    """Rank 0 hangs half way through the checkpoint the first Ctrl-C asked for; a second Ctrl-C aborts: the ranks
    exit 130, the launcher says so in one line (no traceback, no summary), no process is left and no partial
    checkpoint file either."""
    out_dir = str(tmp_path / "out")
    script = [INJECT, "hang-in-save", "1", "--"]
    cmd = _launcher("launch", script) + ["--output", out_dir, "--opts", *RUN_OPTS, "DATA.DATASET", "synthetic",
                                         "DATA.SYNTHETIC_TRAIN_SIZE", "256", "TRAIN.EPOCHS", "2"]
    log_path = str(tmp_path / "run.log")
    proc = _launch(cmd, log_path)
    wait_for_step(proc, run_dir(out_dir), 3)
    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + TIMEOUT
    while MARKER not in open(log_path, errors="replace").read():
        assert time.monotonic() < deadline and proc.poll() is None, open(log_path).read()[-3000:]
        time.sleep(0.05)  # polling the log, not a synchronisation
    time.sleep(StopRequest.REPEAT_S + 0.2)  # a second Ctrl-C, not an echo of the first
    os.killpg(proc.pid, signal.SIGINT)
    code, out = _end(proc, log_path)
    assert code == 130, out[-3000:]
    assert "launch.py: stopped on SIGINT; torchrun ended the job (a rank still running then did not save)." \
        in out, out[-3000:]
    assert "Traceback" not in out and "Root Cause" not in out, out[-3000:]
    assert not [n for n in os.listdir(run_dir(out_dir)) if ".pth" in n], os.listdir(run_dir(out_dir))
