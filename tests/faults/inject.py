"""Run main.py with one fault injected from outside, so production code needs no test hooks:

    python tests/faults/inject.py hang-in-save N -- <main.py arguments>

hang-in-save N: the N-th checkpoint file this process saves (not counting torch.save into memory, as torch's
object collectives do) gets half of its bytes written to the temp file, then
the process prints "FAULT: hanging half way through a checkpoint write" and blocks until it is killed.
"""
from __future__ import annotations

import io
import os
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = "FAULT: hanging half way through a checkpoint write"


def hang_in_save(n: int) -> None:
    import torch

    import engine.checkpoint

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # torch's broadcast/gather of Python objects, not a checkpoint
            return real_save(obj, f, *args, **kwargs)
        calls.append(1)
        if len(calls) < n:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        print(MARKER, flush=True)
        threading.Event().wait()  # until SIGKILL

    engine.checkpoint.torch.save = save  # the module's `torch` is torch itself: this process only


FAULTS = {"hang-in-save": hang_in_save}


def main() -> int:
    split = sys.argv.index("--")
    name, *args = sys.argv[1:split]
    sys.path.insert(0, REPO)
    FAULTS[name](*(int(a) for a in args))
    import main as entry

    return entry.main(sys.argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main())
