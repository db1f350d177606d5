"""engine.host.keep_freed_memory: freed activations stay in the process instead of being faulted in again."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt settings are glibc's")

# One "update" of a CPU step, in miniature: blocks of several MiB allocated, written and freed.
PROGRAM = r"""
import ctypes, importlib.util, resource, sys, torch
spec = importlib.util.spec_from_file_location("host", "engine/host.py")  # alone: importing engine takes seconds
host = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host)
# glibc's documented starting point (128 KiB thresholds), fixed: its dynamic threshold otherwise depends on what
# the process freed before, so the default case would fault in some runs and not in others
libc = ctypes.CDLL(None)
assert libc.mallopt(host.M_MMAP_THRESHOLD, 128 << 10) and libc.mallopt(host.M_TRIM_THRESHOLD, 128 << 10)
if sys.argv[1] == "keep":
    print(host.keep_freed_memory())
def update():  # three blocks of 24 MiB (under 32 MiB)
    a = torch.ones(6 << 20)
    b = torch.ones(6 << 20)
    c = torch.ones(6 << 20)
    del a, b, c
for _ in range(3):
    update()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    update()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_update(mode: str, **env: str) -> tuple[str, float]:
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True,
                         env={**environ, **env}, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    lines = out.stdout.split()
    return " ".join(lines[:-1]), float(lines[-1])


def test_freed_memory_is_reused_without_page_faults():
    said, kept = _faults_per_update("keep")
    _, default = _faults_per_update("default")
    assert said.startswith("malloc keeps freed memory")
    # glibc's defaults map the 72 MiB afresh every update (18,432 pages of 4 KiB); kept, the blocks come back
    # from the heap already mapped (0-614 faults seen)
    assert default > 15_000, default
    assert kept < 2_000, kept


def test_the_users_own_malloc_settings_stand():
    said, _ = _faults_per_update("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")
    assert said == "None"
    said, _ = _faults_per_update("keep", MALLOC_ARENA_MAX_="2")
    assert said == "None"
