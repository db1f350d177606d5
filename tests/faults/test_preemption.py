"""Preemption: a SIGUSR1 that only rank 1 of a 2-process job receives stops both ranks after the same update with a
mid-epoch checkpoint and exit code 0, a Ctrl-C to the launcher does the same, and the same command finishes the run
bitwise equal to an uninterrupted one; SIGTERM does the same to a single-process run (which restores the previous
handler)."""
from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time

import pytest
import torch

import engine
from configs import get_config
from tests.helpers.processes import (CLEAN_LAUNCH, RUN_OPTS, TIMEOUT, assert_bitwise_equal, finish, main_cmd, rank_pid, records,
                                     run_dir, start, wait_for_step)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc"), reason="finds torchrun's workers through /proc")

# Per rank and epoch: 256 / 2 images = 32 micro-batches of 4 = 16 updates (accumulation 2).
OPTS = ["DATA.SYNTHETIC_TRAIN_SIZE", "256", "TRAIN.EPOCHS", "2"]
UPDATES = 16


def _stopped_checkpoint(directory: str, epoch: int) -> tuple[str, int]:
    names = [n for n in os.listdir(directory) if re.fullmatch(rf"ckpt_epoch_{epoch}_step_\d+\.pth", n)]
    assert len(names) == 1, sorted(os.listdir(directory))
    return os.path.join(directory, names[0]), int(names[0].rsplit("_", 1)[1][:-4])


def _interrupt(cmd: list[str], log: str, directory: str, min_step: int, send) -> tuple[int, str, float]:
    """Start cmd, wait for training step `min_step`, call send(proc); returns (exit code, output, seconds
    from the signal to the exit)."""
    proc = start(cmd, log)
    wait_for_step(proc, directory, min_step)
    sent = time.monotonic()
    send(proc)
    code, out = finish(proc, log)
    return code, out, time.monotonic() - sent


def _baseline(root) -> str:
    """The uninterrupted 2-process run the stopped one is compared with; returns its run directory."""
    out = str(root / "baseline")
    code, text = finish(start(main_cmd(out, *OPTS, procs=2), str(root / "baseline.log")), str(root / "baseline.log"))
    assert code == 0, text[-3000:]
    return run_dir(out)


def test_two_stops_of_a_two_process_job_then_resume_is_bitwise_exact(tmp_path):
    """One job stopped twice and resumed by the same command each time. First SIGUSR1 (SLURM's early warning) to
    rank 1 only, in epoch 0: rank 0 must learn of it and stop after the same update. Then Ctrl-C in epoch 1, as a
    terminal sends it: SIGINT to the launcher's process group (torchrun's ranks run in sessions of their own, so
    only the launcher gets it); scripts/launch.py passes it on and exits as the ranks do, 0, with no traceback and a
    few lines after the signal. The finished run equals the uninterrupted one bit for bit."""
    launcher = "launch" if CLEAN_LAUNCH else "torchrun"
    out = str(tmp_path / "preempted")
    cmd, d = main_cmd(out, *OPTS, procs=2, launcher=launcher), run_dir(out)

    code, text, seconds = _interrupt(cmd, str(tmp_path / "a.log"), d, 3,
                                     lambda p: os.kill(rank_pid(p, 1), signal.SIGUSR1))
    assert code == 0 and seconds < 60, text[-3000:]  # the launcher's exit code: both ranks exited 0
    path, step = _stopped_checkpoint(d, 0)
    assert 3 <= step < UPDATES, "the stop should fall inside epoch 0"
    assert f"Stopping on SIGUSR1 (update {step}, part way through epoch 0); saved {path}" in text
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == -1 and ckpt["global_step"] == step and len(ckpt["rng"]) == 2  # no epoch finished yet
    micro = 2 * step
    progress = dict(ckpt["epoch_progress"])
    assert progress.pop("loss_count") == 2 * micro and progress.pop("loss_sum") > 0  # micro-batches of both ranks
    assert progress == {"epoch": 0, "micro_batches": micro, "batch_size": 4, "accumulation_steps": 2,
                        "world_size": 2}

    code, text, seconds = _interrupt(cmd, str(tmp_path / "b.log"), d, UPDATES + 2,
                                     lambda p: os.killpg(p.pid, signal.SIGINT))
    assert f"resumed from {path} (epoch 0 after {micro} of 32 micro-batches, step {step})" in text
    assert seconds < 60, text[-3000:]
    path, step = _stopped_checkpoint(d, 1)
    assert f"Stopping on SIGINT (update {step}, part way through epoch 1); saved {path}" in text
    assert text.count("Ctrl-C: stopping after this update") == 1, text[-3000:]  # said once, by rank 0
    assert text[:text.index("Train: [")].count("\n") <= 40, text[:5000]  # start-up lines before the first step's
    if CLEAN_LAUNCH:
        after = text[text.index("Ctrl-C: stopping after this update"):].splitlines()
        assert code == 0 and len(after) <= 8 and "Traceback" not in text, text[-3000:]
    assert "KeyboardInterrupt" not in text, text[-3000:]

    code, text = finish(start(cmd, str(tmp_path / "c.log")), str(tmp_path / "c.log"))
    assert code == 0, text[-3000:]
    assert f"resumed from {path}" in text
    baseline = _baseline(tmp_path)
    # each interrupted epoch's train_loss is the mean over all of its micro-batches, as in the uninterrupted run
    resumed, uninterrupted = ([r["train_loss"] for r in records(directory, "epoch")] for directory in (d, baseline))
    assert resumed == pytest.approx(uninterrupted, rel=1e-6) and len(resumed) == 2
    assert sorted(n for n in os.listdir(d) if n.endswith(".pth")) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert_bitwise_equal(os.path.join(d, "ckpt_epoch_1.pth"), os.path.join(baseline, "ckpt_epoch_1.pth"))


def _send_when(directory: str, min_step: int, signum: int) -> threading.Thread:
    """A thread that sends `signum` to this process once metrics.jsonl records step `min_step`."""
    def watch() -> None:
        wait_for_step(None, directory, min_step)
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_in_a_single_process_run_saves_mid_epoch_and_resumes_exactly(tmp_path, signum):
    """engine.run in this process, so the three runs cost no interpreter start-up; the signal is real. Ctrl-C
    (SIGINT) stops like SIGTERM."""
    opts = ["DATA.SYNTHETIC_TRAIN_SIZE", "192", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0"]  # 24 updates
    cfg = lambda output: get_config(None, RUN_OPTS + opts + ["OUTPUT", output])  # noqa: E731
    assert engine.run(cfg(str(tmp_path / "baseline"))) == 0
    d = run_dir(str(tmp_path / "preempted"))
    caught = []

    def late(signum, frame) -> None:  # in place outside the run: a late signal must not end pytest
        caught.append(signum)

    before = signal.signal(signum, late)
    try:
        watcher = _send_when(d, 3, signum)
        assert engine.run(cfg(str(tmp_path / "preempted"))) == 0
        watcher.join(TIMEOUT)
        assert signal.getsignal(signum) is late, "the run must restore the previous handler"
        assert not caught, "the signal came after the run had ended"
    finally:
        signal.signal(signum, before)
    path, step = _stopped_checkpoint(d, 0)
    assert 3 <= step < 24
    assert engine.run(cfg(str(tmp_path / "preempted"))) == 0
    assert f"resumed from {path}" in open(os.path.join(d, "log.txt")).read()
    assert_bitwise_equal(os.path.join(d, "ckpt_epoch_0.pth"),
                         os.path.join(run_dir(str(tmp_path / "baseline")), "ckpt_epoch_0.pth"))


def test_a_second_ctrl_c_aborts_and_an_echo_of_the_first_does_not(monkeypatch):
    from engine import distributed

    clock = [100.0]
    monkeypatch.setattr(distributed.time, "monotonic", lambda: clock[0])
    stop = distributed.StopRequest()
    stop._handle(signal.SIGINT, None)
    clock[0] += 0.2  # torchrun's copy of the same Ctrl-C
    stop._handle(signal.SIGINT, None)
    assert stop.received == signal.SIGINT
    clock[0] += 5.0
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_a_rank_that_torchrun_ends_while_its_error_unwinds_exits_without_a_report(monkeypatch):
    """torchrun ends the other ranks of a failed job with SIGTERM; one that comes while a rank's own (peer) error
    still unwinds through the stop handler is taken as a stop request, so the rank must not then wait and report."""
    from engine import distributed

    slept = []
    monkeypatch.setattr(distributed, "under_torchrun", lambda: True)
    monkeypatch.setattr(distributed.time, "sleep", slept.append)
    distributed.StopRequest()
    assert distributed.defer_exit_under_torchrun() and slept == [distributed.PEER_GRACE_S]  # waits, then reports
    distributed.StopRequest()._handle(signal.SIGTERM, None)
    assert not distributed.defer_exit_under_torchrun() and len(slept) == 1  # ends at once, quietly
    distributed.StopRequest()  # a new run starts clean
    assert distributed.defer_exit_under_torchrun()


def test_a_stop_during_evaluation_ends_it_early_saves_the_epoch_and_resumes_exactly(tmp_path, monkeypatch):
    """SIGTERM arrives while epoch 0 is being evaluated: evaluation stops after the batch in hand, epoch 0 is
    saved (not its evaluation), and the resumed run ends bitwise equal to an uninterrupted one."""
    run_module = sys.modules["engine.run"]  # the module (the package exports its run function as engine.run)
    opts = ["DATA.SYNTHETIC_TRAIN_SIZE", "64", "DATA.SYNTHETIC_VAL_SIZE", "40", "TRAIN.EPOCHS", "2"]
    cfg = lambda output: get_config(None, RUN_OPTS + opts + ["OUTPUT", output])  # noqa: E731
    assert engine.run(cfg(str(tmp_path / "baseline"))) == 0
    real_evaluate, batches_seen = run_module.evaluate, []

    class SignalAtFirstBatch:
        """The validation loader, sending this process SIGTERM as the first evaluation gets its first batch."""

        def __init__(self, loader) -> None:
            self.loader, self.sampler, self.batch_size = loader, loader.sampler, loader.batch_size

        def __len__(self) -> int:
            return len(self.loader)

        def __iter__(self):
            for batch in self.loader:
                batches_seen.append(1)
                if len(batches_seen) == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield batch

    def evaluate_with_signal(model, loader, *args, **kwargs):
        return real_evaluate(model, SignalAtFirstBatch(loader) if not batches_seen else loader, *args, **kwargs)

    monkeypatch.setattr(run_module, "evaluate", evaluate_with_signal)
    d = run_dir(str(tmp_path / "stopped"))
    assert engine.run(cfg(str(tmp_path / "stopped"))) == 0
    assert len(batches_seen) == 1, "evaluation went on after the stop"  # 40 images, batch 4: 10 batches
    assert sorted(n for n in os.listdir(d) if n.endswith(".pth")) == ["ckpt_epoch_0.pth"]
    log_text = open(os.path.join(d, "log.txt")).read()
    assert "during epoch 0's evaluation: the epoch is saved" in log_text and "Stopping on SIGTERM" in log_text
    monkeypatch.setattr(run_module, "evaluate", real_evaluate)
    assert engine.run(cfg(str(tmp_path / "stopped"))) == 0
    assert_bitwise_equal(os.path.join(d, "ckpt_epoch_1.pth"),
                         os.path.join(run_dir(str(tmp_path / "baseline")), "ckpt_epoch_1.pth"))
