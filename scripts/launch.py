"""`python scripts/launch.py`: torchrun with a clean stop.

Takes torchrun's arguments unchanged (`python scripts/launch.py --nproc_per_node=8 main.py --cfg ...`) and runs
torchrun; it imports nothing of the project, so it starts as fast as torchrun. What differs is a stop signal to the launcher itself (a terminal's Ctrl-C reaches only the launcher:
torchrun starts every rank in a session of its own). Plain torchrun raises on SIGINT or SIGTERM: it passes the
signal on, kills the ranks that have not exited `--shutdown-timeout` seconds later (30 by default, which a large
model's checkpoint save may need), prints a SignalException traceback and exits 1. Here SIGINT, SIGTERM and,
when `--signals-to-handle` names it, SIGUSR1 are passed on to the ranks' process groups as they come, while
torchrun goes on watching them: the ranks finish their update, rank 0 saves the checkpoint to resume from, every
rank exits 0, and so does the launcher, without a traceback.

A second Ctrl-C (one second or more after the first, as the ranks count it) is torchrun's to handle, as is a
signal that comes while no rank runs (the rendezvous): torchrun passes it on (the ranks abort without saving,
exit code 130, as a plain `python main.py` does on a second Ctrl-C), ends the job, and the launcher says so in one
line and exits 128 + the signal's number (130 for SIGINT). Repeated SIGTERM or SIGUSR1 are passed on too; the
ranks take them as the same request. A rank that dies of the signal before it could install its handler (during
its start-up) ends the job the same way, in one line; under `--max-restarts`, torchrun restarts it as it restarts
any failed rank.

Needs torch >= 2.9 (torchrun's `--signals-to-handle`); with an older torch the launcher is plain torchrun.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

# What the ranks take as a request to stop after an update and save, and how close a second SIGINT may follow the
# first to count as the same request: engine.distributed.StopRequest's SIGNALS and REPEAT_S (a test checks that
# they agree).
PASSED_ON = ("SIGTERM", "SIGUSR1", "SIGINT")
REPEAT_S = 1.0
ABORTED = 130  # a rank's exit code after a second Ctrl-C (engine.run)


def child_processes(pid: int) -> list[int]:
    """The pids of the processes whose parent is `pid` (/proc on Linux, `ps` elsewhere)."""
    if os.path.isdir("/proc/self"):
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # the name in brackets may hold spaces
            except (OSError, IndexError, ValueError):
                continue  # it ended while we looked
            if ppid == pid:
                found.append(int(entry))
        return found
    ps = subprocess.Popen(["ps", "-A", "-o", "pid=,ppid="], stdout=subprocess.PIPE, text=True)
    table = ps.communicate()[0]
    rows = (line.split() for line in table.splitlines() if line.strip())
    return [int(p) for p, pp in rows if int(pp) == pid and int(p) != ps.pid]  # not ps itself


def _signal_group(pid: int, signum: int) -> None:
    """`signum` to the process group `pid` leads (a rank and its DataLoader workers, which ignore the stop signals,
    or a wrapper script and the rank it runs), as torchrun signals its ranks; to `pid` alone if it leads none."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):  # it exited meanwhile
        pass


class PassOn:
    """While active, the stop signals given go to the process groups of this process's children (torchrun's
    ranks) instead of to torchrun's handler. A second SIGINT at least REPEAT_S after the first, or a signal while
    there are no children, raises torchrun's SignalException, as torchrun's own handler would. A context manager;
    the previous handlers come back on exit."""

    def __init__(self, signums: list[int]) -> None:
        self.signums = signums
        self.last = 0  # the last signal passed on (0: none yet)
        self._first_interrupt = 0.0  # time.monotonic() of the first SIGINT passed on
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "PassOn":
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        from torch.distributed.elastic.multiprocessing.api import SignalException

        ranks = child_processes(os.getpid())
        second_interrupt = (signum == signal.SIGINT and self._first_interrupt
                            and time.monotonic() - self._first_interrupt >= REPEAT_S)
        if not ranks or second_interrupt:
            raise SignalException(f"Process {os.getpid()} got signal: {signum}", sigval=signal.Signals(signum))
        if signum == signal.SIGINT and not self._first_interrupt:
            self._first_interrupt = time.monotonic()
        self.last = signum
        for pid in ranks:
            _signal_group(pid, signum)


def split_signals(names: str) -> tuple[list[int], str]:
    """torchrun's `--signals-to-handle` list split into the signals passed on here and the list left to torchrun
    (never empty: torchrun would warn about an empty name, so SIGQUIT, one of its defaults, stays then)."""
    listed = [n.strip() for n in names.split(",") if n.strip()]
    ours = [getattr(signal, n) for n in listed if n in PASSED_ON and hasattr(signal, n)]
    theirs = [n for n in listed if n not in PASSED_ON]
    return ours, ",".join(theirs or ["SIGQUIT"])


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, record

    args = torchrun.parse_args(argv)
    launch = record(torchrun.run)  # what torchrun's main does: the failing rank's error file reaches the summary
    if getattr(args, "signals_to_handle", None) is None:  # torch < 2.9 cannot leave these signals to us
        launch(args)
        return 0
    ours, args.signals_to_handle = split_signals(args.signals_to_handle)
    with PassOn(ours) as passed:
        try:
            launch(args)
        except SignalException as e:
            print(f"launch.py: stopped on {signal.Signals(e.sigval).name}; torchrun ended the job (a rank still "
                  "running then did not save).", file=sys.stderr)
            return 128 + int(e.sigval)
        except ChildFailedError as e:
            # the first rank to fail decides; torchrun then ended the others (SIGTERM)
            code = e.get_first_failure()[1].exitcode
            if not passed.last or code not in (ABORTED, -passed.last):
                raise  # a failure of its own: torchrun's summary names the rank and its error
            print(f"launch.py: stopped on {signal.Signals(passed.last).name}; the first rank to end exited {code} "
                  "(aborted, or killed by the signal), so torchrun ended the others.", file=sys.stderr)
            return 128 + passed.last
    return 0


if __name__ == "__main__":
    sys.exit(main())
