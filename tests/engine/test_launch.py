"""engine.launch's parts: finding torchrun's ranks (its child processes), passing stop signals on to them, the
third signal or one without ranks left to torchrun, and which signals torchrun keeps. The whole launcher runs in
tests/faults (test_preemption: Ctrl-C and a bitwise resume; test_exit: a second Ctrl-C, a rank's failure)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException

from engine import launch


def _children(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(n)]


def _end(procs: list[subprocess.Popen]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            p.kill()
    return [p.wait(timeout=30) for p in procs]


def test_child_processes_finds_this_processes_children_through_proc_and_ps(monkeypatch):
    procs = _children(2)
    try:
        pids = {p.pid for p in procs}
        assert pids <= set(launch.child_processes(os.getpid()))
        assert not pids & set(launch.child_processes(procs[0].pid))
        monkeypatch.setattr(launch.os.path, "isdir", lambda path: False)  # as on macOS: no /proc
        assert pids <= set(launch.child_processes(os.getpid()))
    finally:
        _end(procs)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_pass_on_sends_two_signals_to_the_ranks_then_leaves_the_third_to_torchrun(monkeypatch):
    procs = _children(2)
    try:
        monkeypatch.setattr(launch, "child_processes", lambda pid: [p.pid for p in procs])
        with launch.PassOn([signal.SIGUSR1]) as passed:
            passed._handle(signal.SIGUSR1, None)
            assert _end(procs) == [-signal.SIGUSR1, -signal.SIGUSR1]  # both ranks got it
            passed._handle(signal.SIGUSR1, None)  # the ranks have exited meanwhile: no error
            assert passed.count == 2
            with pytest.raises(SignalException) as raised:
                passed._handle(signal.SIGUSR1, None)
            assert raised.value.sigval == signal.SIGUSR1
            assert signal.getsignal(signal.SIGUSR1) == passed._handle
        assert signal.getsignal(signal.SIGUSR1) != passed._handle  # the previous handler is back
    finally:
        _end(procs)


def test_a_signal_while_no_rank_runs_is_torchruns_to_handle(monkeypatch):
    monkeypatch.setattr(launch, "child_processes", lambda pid: [])
    passed = launch.PassOn([signal.SIGINT])
    with pytest.raises(SignalException) as raised:
        passed._handle(signal.SIGINT, None)
    assert raised.value.sigval == signal.SIGINT and passed.count == 0


def test_split_signals_keeps_the_others_for_torchrun():
    ours, theirs = launch.split_signals("SIGTERM,SIGINT,SIGHUP,SIGQUIT")  # torchrun's default
    assert ours == [signal.SIGTERM, signal.SIGINT] and theirs == "SIGHUP,SIGQUIT"
    ours, theirs = launch.split_signals(" SIGUSR1 , SIGTERM ")
    assert ours == [signal.SIGUSR1, signal.SIGTERM]
    assert theirs == "SIGQUIT"  # never empty: torchrun warns about a signal without a name
    ours, theirs = launch.split_signals("SIGUSR2,SIGINT")  # the ranks do not stop on SIGUSR2: torchrun's to handle
    assert ours == [signal.SIGINT] and theirs == "SIGUSR2"
