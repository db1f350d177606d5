"""The host process's memory allocator: freed memory stays in the process for the next update.

A training step on the CPU allocates its activations and gradients and frees them again, every update. glibc's
malloc hands large freed blocks back to the kernel (blocks over its mmap threshold, and the free top of the heap
over its trim threshold), so the next update faults the same pages in again, each one zeroed by the kernel. For
the quickstart model on an AVX2-only 2-core EPYC that was about 20,000 page faults per second per process and
7-10% of the time in the kernel; keeping the memory made training 8-11% faster (benchmarks/README.md).
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit (4 MiB * sizeof(long))
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes (an int)


def keep_freed_memory() -> str | None:
    """Make glibc keep freed memory for reuse: blocks up to 32 MiB come from the heap, and the heap is not trimmed.
    Returns what was set, or None where nothing was: not glibc (musl, macOS, Windows), or the user chose malloc
    settings already (GLIBC_TUNABLES or a MALLOC_*_ variable), which stand."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "") or any(
            name.startswith("MALLOC_") and name.endswith("_") for name in os.environ):
        return None
    libc = ctypes.CDLL(None)
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        return None
    return "malloc keeps freed memory (mmap threshold 32 MiB, no trim)"
