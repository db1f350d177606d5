"""Exponential moving average of the weights (MODEL_EMA.*), via timm's ModelEmaV3.

The EMA is updated once per optimizer update with the update count, as timm's train.py does: the first
update copies the weights, later ones blend with MODEL_EMA.DECAY (or timm's warmup ramp towards it when
MODEL_EMA.WARMUP is on). It lives on the training device so it can be evaluated every epoch.
"""
from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn
from yacs.config import CfgNode


def build_ema(cfg: CfgNode, model: nn.Module) -> ModelEmaV3 | None:
    """A ModelEmaV3 of `model` (the unwrapped module) when MODEL_EMA.ENABLE, else None."""
    if not cfg.MODEL_EMA.ENABLE:
        return None
    return ModelEmaV3(model, decay=cfg.MODEL_EMA.DECAY, use_warmup=bool(cfg.MODEL_EMA.WARMUP))


def ema_update(ema: ModelEmaV3, model: nn.Module, num_updates: int) -> None:
    """Blend `model` into `ema` after optimizer update number `num_updates` (1-based)."""
    ema.update(model, step=num_updates)


def ema_state(ema: ModelEmaV3) -> dict[str, torch.Tensor]:
    """The EMA weights as a plain state dict (same keys as the model's)."""
    return ema.module.state_dict()


def load_ema_state(ema: ModelEmaV3, state: dict[str, torch.Tensor]) -> None:
    """Restore EMA weights saved by `ema_state`."""
    ema.module.load_state_dict(state)
