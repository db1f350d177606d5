"""What this CPU computes natively, for choosing precision and kernels by capability, never by machine.

`torch.backends.cpu.get_cpu_capability()` follows ATEN_CPU_CAPABILITY, so `ATEN_CPU_CAPABILITY=avx2` (with
`ONEDNN_MAX_CPU_ISA=AVX2` for oneDNN) makes a larger CPU choose as an AVX2-only one does.
"""
import functools
import platform

import torch


def cpu_capability() -> str:
    """The vector ISA torch's CPU kernels use here: "AVX512", "AVX2", "DEFAULT", "ZVECTOR", "SVE256"..."""
    return torch.backends.cpu.get_cpu_capability()


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=None)
def _hardware_bf16() -> bool:
    """Whether the CPU has bfloat16 instructions (x86: AVX512-BF16 or AMX-BF16; Arm: what oneDNN reports)."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if not _is_x86():
        return True
    # oneDNN also says yes on AVX-512 CPUs without BF16 instructions, where it emulates bf16 slowly
    if hasattr(torch.cpu, "get_capabilities"):  # torch >= 2.8
        caps = torch.cpu.get_capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_bf16_native() -> bool:
    """Whether bfloat16 matmuls run natively here (not emulated, which is several times slower than float32).

    Needs the bf16 instructions and, on x86, torch's AVX-512 kernels in use (ATEN_CPU_CAPABILITY may lower them).
    """
    if not _hardware_bf16():
        return False
    return not _is_x86() or cpu_capability().startswith("AVX512")


def cpu_description() -> str:
    """One line naming the CPU class, for logs and benchmark reports: e.g. "AVX2, bf16 emulated"."""
    return f"{cpu_capability()}, bf16 {'native' if cpu_bf16_native() else 'emulated'}"
