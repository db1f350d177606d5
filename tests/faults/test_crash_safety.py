"""Crashes while saving: a SIGKILL half way through a checkpoint write, and a full disk (ENOSPC) half way through
one, never leave a broken file under a checkpoint's name nor lose the last good checkpoint; pruning keeps it; the
next run cleans up and resumes from it."""
from __future__ import annotations

import errno
import logging
import os
import signal
import time

import torch

import engine
import engine.checkpoint as ck
from configs import get_config
from tests.helpers.processes import RUN_OPTS, TIMEOUT, finish, main_cmd, run_dir, start
from tests.faults.inject import MARKER

OPTS = ["DATA.SYNTHETIC_TRAIN_SIZE", "32", "TRAIN.EPOCHS", "2"]  # 4 updates per epoch, a checkpoint after each


def _wait_for_line(proc, log_path: str, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        with open(log_path, errors="replace") as f:
            if text in f.read():
                return
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before printing {text!r}"
        time.sleep(0.02)  # polling interval; the loop waits for the line itself
    raise AssertionError(f"{text!r} did not appear within {TIMEOUT} s")


def _files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if "ckpt" in n)


def test_sigkill_half_way_through_a_save_then_rerun_resumes_from_the_last_good(tmp_path, caplog):
    out, log = str(tmp_path / "run"), str(tmp_path / "run.log")
    proc = start(main_cmd(out, *OPTS, fault=["hang-in-save", "2"]), log)  # the save after epoch 1 hangs
    _wait_for_line(proc, log, MARKER)
    os.killpg(proc.pid, signal.SIGKILL)
    code, _ = finish(proc, log)
    assert code == -signal.SIGKILL
    d = run_dir(out)
    temp, good = _files(d)  # the half-written file only ever has a temp name
    assert good == "ckpt_epoch_0.pth" and temp.startswith(".ckpt_epoch_1.pth.") and temp.endswith(".tmp"), temp
    assert ck.load_checkpoint(os.path.join(d, "ckpt_epoch_0.pth"))["epoch"] == 0
    assert ck.prune_checkpoints(d, keep_last=0) == []  # the last good checkpoint is never pruned

    with caplog.at_level(logging.INFO):
        assert engine.run(get_config(None, RUN_OPTS + OPTS + ["OUTPUT", out])) == 0
    assert f"Removed unfinished checkpoint writes of an earlier run: {temp}" in caplog.text
    assert f"resumed from {os.path.join(d, 'ckpt_epoch_0.pth')}" in caplog.text
    assert _files(d) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert ck.load_checkpoint(os.path.join(d, "ckpt_epoch_1.pth"))["global_step"] == 8


class _DiskFullAfter:
    """A file whose writes fail with ENOSPC once `limit` bytes have been written."""

    def __init__(self, f, limit: int) -> None:
        self.f, self.left = f, limit

    def write(self, data) -> int:
        if len(data) > self.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.left -= len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def test_disk_full_half_way_through_a_save_stops_with_a_clear_error(tmp_path, monkeypatch, caplog):
    real_save, saves = torch.save, []

    def save(obj, f):
        saves.append(1)
        real_save(obj, f if len(saves) < 2 else _DiskFullAfter(f, 8192))  # the save after epoch 1 fails

    monkeypatch.setattr(ck.torch, "save", save)
    out = str(tmp_path)
    assert engine.run(get_config(None, RUN_OPTS + OPTS + ["OUTPUT", out])) == 1
    d = run_dir(out)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        f"Could not write checkpoint {os.path.join(d, 'ckpt_epoch_1.pth')}: No space left on device."), errors
    assert _files(d) == ["ckpt_epoch_0.pth"]  # no partial file, the previous checkpoint intact
    monkeypatch.undo()
    assert ck.load_checkpoint(os.path.join(d, "ckpt_epoch_0.pth"))["global_step"] == 4
