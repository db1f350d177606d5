"""Mixed precision policy: which autocast dtype on which device, and whether a loss scaler is needed.

AMP_DTYPE auto picks bfloat16 wherever the device supports it (CPU, and CUDA from Ampere on): bfloat16 has
float32's range, so it needs no loss scaling. float16 is only offered on CUDA, with a GradScaler.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
from yacs.config import CfgNode

from configs import ConfigError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class AmpPolicy:
    """Autocast settings for one device."""

    enabled: bool
    dtype: torch.dtype
    device_type: str

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


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu"


def resolve_amp(cfg: CfgNode, device: torch.device) -> AmpPolicy:
    """The AmpPolicy for AMP_ENABLE / AMP_DTYPE on `device`."""
    enabled = bool(cfg.AMP_ENABLE)
    choice = cfg.AMP_DTYPE
    if choice == "auto":
        dtype = torch.bfloat16 if _bf16_supported(device) else torch.float16
    else:
        dtype = _DTYPES[choice]
    if enabled and dtype == torch.float16 and device.type != "cuda":
        raise ConfigError(
            f"AMP_DTYPE float16 needs CUDA (loss scaling); on {device.type} use AMP_DTYPE bfloat16 or auto, "
            "or --disable_amp."
        )
    if enabled and dtype == torch.bfloat16 and not _bf16_supported(device):
        raise ConfigError(f"AMP_DTYPE bfloat16 is not supported on {device}; use AMP_DTYPE float16 or auto.")
    return AmpPolicy(enabled=enabled, dtype=dtype, device_type=device.type)
