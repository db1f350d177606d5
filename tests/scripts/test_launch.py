"""scripts/launch.py's parts: finding torchrun's ranks (its child processes), passing stop signals on to their process
groups, the second Ctrl-C or a signal without ranks left to torchrun, and which signals torchrun keeps. The whole
launcher runs in tests/faults (test_preemption: Ctrl-C and a bitwise resume; test_exit: a second Ctrl-C, SIGTERM,
a rank's failure)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException

from scripts import launch
from engine.distributed import StopRequest
from tests.helpers.processes import REPO, alive

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals and process groups")

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_the_launcher_passes_on_what_the_ranks_stop_on():
    assert set(launch.PASSED_ON) == set(StopRequest.SIGNALS) and launch.REPEAT_S == StopRequest.REPEAT_S


def test_child_processes_are_exactly_the_children_through_proc_and_through_ps():
    """In a fresh process with two children (one with a child of its own): both ways find those two, not the
    grandchild, and not `ps` itself."""
    script = textwrap.dedent(f"""
        import json, os, subprocess, sys
        sys.path.insert(0, {REPO!r})
        from scripts import launch
        sleeper = {SLEEPER!r}
        nested = [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(60)"]
        kids = [subprocess.Popen(sleeper), subprocess.Popen(nested + sleeper)]
        by_proc = launch.child_processes(os.getpid())
        launch.os.path.isdir = lambda path: False  # as on macOS: no /proc
        by_ps = launch.child_processes(os.getpid())
        for k in kids:
            k.kill()
        print(json.dumps([[k.pid for k in kids], by_proc, by_ps]))
    """)
    kids, by_proc, by_ps = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                     check=True, timeout=60).stdout)
    assert sorted(by_proc) == sorted(kids) and sorted(by_ps) == sorted(kids)


def _group_leaders(n: int) -> list[tuple[subprocess.Popen, int]]:
    """n children in sessions of their own (as torchrun starts its ranks), each with a child in its group (as a
    rank's DataLoader worker); returns (child, grandchild pid) pairs."""
    code = "import subprocess, sys, time; p = subprocess.Popen(sys.argv[1:]); print(p.pid, flush=True); time.sleep(60)"
    out = []
    for _ in range(n):
        p = subprocess.Popen([sys.executable, "-c", code, *SLEEPER], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
        out.append((p, int(p.stdout.readline())))
    return out


def test_signals_reach_each_ranks_whole_process_group(monkeypatch):
    pairs = _group_leaders(2)
    try:
        monkeypatch.setattr(launch, "child_processes", lambda pid: [p.pid for p, _ in pairs])
        with launch.PassOn([signal.SIGUSR1]) as passed:
            passed._handle(signal.SIGUSR1, None)
            assert [p.wait(timeout=30) for p, _ in pairs] == [-signal.SIGUSR1] * 2
            for _, grandchild in pairs:  # not our child (init reaps it): poll until it has gone
                deadline = time.monotonic() + 30
                while alive(grandchild):
                    assert time.monotonic() < deadline, "a rank's worker did not get the signal"
                    time.sleep(0.05)  # polling the process table, not a synchronisation
            passed._handle(signal.SIGUSR1, None)  # a repeat, to ranks that have exited meanwhile: no error
            assert passed.last == signal.SIGUSR1 and signal.getsignal(signal.SIGUSR1) == passed._handle
        assert signal.getsignal(signal.SIGUSR1) != passed._handle  # the previous handler is back
    finally:
        for p, _ in pairs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_a_second_ctrl_c_is_torchruns_to_handle_an_echo_of_the_first_is_passed_on(monkeypatch):
    sent, clock = [], [100.0]
    monkeypatch.setattr(launch, "child_processes", lambda pid: [12345])
    monkeypatch.setattr(launch, "_signal_group", lambda pid, signum: sent.append((pid, signum)))
    monkeypatch.setattr(launch.time, "monotonic", lambda: clock[0])
    passed = launch.PassOn([signal.SIGINT, signal.SIGTERM])
    passed._handle(signal.SIGINT, None)
    clock[0] += 0.5  # a double tap: the ranks take it as the same Ctrl-C
    passed._handle(signal.SIGINT, None)
    for _ in range(3):  # SIGTERM again and again: passed on, never escalated
        passed._handle(signal.SIGTERM, None)
    assert sent == [(12345, signal.SIGINT)] * 2 + [(12345, signal.SIGTERM)] * 3
    clock[0] += 1.0
    with pytest.raises(SignalException) as raised:  # the second Ctrl-C: torchrun ends the job
        passed._handle(signal.SIGINT, None)
    assert raised.value.sigval == signal.SIGINT and len(sent) == 5


def test_a_signal_while_no_rank_runs_is_torchruns_to_handle(monkeypatch):
    monkeypatch.setattr(launch, "child_processes", lambda pid: [])
    passed = launch.PassOn([signal.SIGTERM])
    with pytest.raises(SignalException) as raised:
        passed._handle(signal.SIGTERM, None)
    assert raised.value.sigval == signal.SIGTERM and passed.last == 0


def test_split_signals_keeps_the_others_for_torchrun():
    ours, theirs = launch.split_signals("SIGTERM,SIGINT,SIGHUP,SIGQUIT")  # torchrun's default
    assert ours == [signal.SIGTERM, signal.SIGINT] and theirs == "SIGHUP,SIGQUIT"
    ours, theirs = launch.split_signals(" SIGUSR1 , SIGTERM ")
    assert ours == [signal.SIGUSR1, signal.SIGTERM]
    assert theirs == "SIGQUIT"  # never empty: torchrun warns about a signal without a name
    ours, theirs = launch.split_signals("SIGUSR2,SIGINT")  # the ranks do not stop on SIGUSR2: torchrun's to handle
    assert ours == [signal.SIGINT] and theirs == "SIGUSR2"
