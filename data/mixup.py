"""Mixup / CutMix with label smoothing, built from the config (timm's Mixup, official values)."""
from __future__ import annotations

from timm.data import Mixup

from data.errors import DataError


def mixup_active(cfg) -> bool:
    return cfg.AUG.MIXUP > 0 or cfg.AUG.CUTMIX > 0 or cfg.AUG.CUTMIX_MINMAX is not None


def build_mixup(cfg, num_classes: int) -> Mixup | None:
    """timm Mixup producing soft targets (sum 1), or None when mixup and cutmix are both off.

    The engine applies it on the device: `x, y = mixup_fn(x, y)`; the training batch must be even.
    """
    if not mixup_active(cfg):
        return None
    if cfg.DATA.BATCH_SIZE % 2:
        raise DataError(
            f"DATA.BATCH_SIZE is {cfg.DATA.BATCH_SIZE}, but mixup/cutmix (AUG.MIXUP={cfg.AUG.MIXUP}, "
            f"AUG.CUTMIX={cfg.AUG.CUTMIX}) pairs images within a batch and needs an even batch size; "
            "use an even DATA.BATCH_SIZE or set AUG.MIXUP 0 AUG.CUTMIX 0."
        )
    minmax = cfg.AUG.CUTMIX_MINMAX
    return Mixup(
        mixup_alpha=cfg.AUG.MIXUP,
        cutmix_alpha=cfg.AUG.CUTMIX,
        cutmix_minmax=tuple(minmax) if minmax is not None else None,
        prob=cfg.AUG.MIXUP_PROB,
        switch_prob=cfg.AUG.MIXUP_SWITCH_PROB,
        mode=cfg.AUG.MIXUP_MODE,
        label_smoothing=cfg.MODEL.LABEL_SMOOTHING,
        num_classes=num_classes,
    )
