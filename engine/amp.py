"""Mixed precision policy: which autocast dtype on which device, and whether a loss scaler is needed.

AMP_DTYPE auto picks bfloat16 wherever the device computes it natively (CUDA from Ampere on; CPUs with
AVX512-BF16 or AMX, or Arm's bf16): bfloat16 has float32's range, so it needs no loss scaling. On a CPU that
only emulates bfloat16 (AVX2-only, AVX-512 without BF16) autocast is several times slower than float32, so auto
trains in float32 there. float16 is only offered on CUDA, with a GradScaler.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import ContextManager

import torch
from yacs.config import CfgNode

from configs import ConfigError
from engine.logging_utils import ONCE_PER_JOB
from models.cpu import cpu_bf16_native, cpu_description

log = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class AmpPolicy:
    """Autocast settings for one device."""

    enabled: bool
    dtype: torch.dtype
    device_type: str
    reason: str = ""  # why this precision, for the log

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "") if self.enabled else "float32"

    def autocast(self) -> ContextManager:
        """The autocast context for a forward pass (a no-op context when AMP is off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for float16, else None."""
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def _bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_bf16_native()


def resolve_amp(cfg: CfgNode, device: torch.device) -> AmpPolicy:
    """The AmpPolicy for AMP_ENABLE / AMP_DTYPE on `device`, with the reason for the choice."""
    enabled, choice = bool(cfg.AMP_ENABLE), cfg.AMP_DTYPE
    native = _bf16_native(device)
    where = f"CPU ({cpu_description()})" if device.type == "cpu" else str(device)
    if not enabled:
        return AmpPolicy(False, torch.float32, device.type, "AMP_ENABLE is off")
    if choice == "auto":
        if native:
            return AmpPolicy(True, torch.bfloat16, device.type, f"AMP_DTYPE auto: bfloat16 is native on {where}")
        if device.type == "cpu":
            return AmpPolicy(False, torch.float32, device.type,
                             f"AMP_DTYPE auto: {where} only emulates bfloat16, which is slower than float32 there")
        dtype = torch.float16
    else:
        dtype = _DTYPES[choice]
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(
            f"AMP_DTYPE float16 needs CUDA (loss scaling); on {device.type} use AMP_DTYPE bfloat16 or auto, "
            "or --disable_amp."
        )
    if dtype == torch.bfloat16 and device.type == "cuda" and not native:
        raise ConfigError(f"AMP_DTYPE bfloat16 is not supported on {device}; use AMP_DTYPE float16 or auto.")
    if dtype == torch.bfloat16 and device.type == "cpu" and not native:
        log.warning("AMP_DTYPE bfloat16 on %s: bfloat16 is emulated there and runs several times slower than "
                    "float32; AMP_DTYPE auto or --disable_amp trains in float32", where, extra=ONCE_PER_JOB)
        return AmpPolicy(True, dtype, device.type, f"AMP_DTYPE bfloat16 (emulated on {where})")
    return AmpPolicy(True, dtype, device.type, f"AMP_DTYPE {choice} on {where}")
