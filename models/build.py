"""The one mapping from the config to a model's keyword arguments."""
import logging
from typing import Any, Dict, Optional

import torch
from torch import nn

from .swin import SwinTransformer

log = logging.getLogger(__name__)


def resolve_attn_impl(attn_impl: str, device: Optional[torch.device] = None) -> str:
    """"auto" picks the fastest kernel for the device. Measured (Swin-T, batch 8 CPU / 128 H200, vs eager):
    SDPA is faster for CUDA training and inference and on par for fp32 CPU inference; on CPU, training and
    bf16 run the eager kernel either way (WindowAttention switches), so SDPA everywhere."""
    if attn_impl != "auto":
        return attn_impl
    return "sdpa"


def swin_kwargs(cfg: Any, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """SwinTransformer keyword arguments from cfg.MODEL.SWIN.*, MODEL.*, DATA.IMG_SIZE and TRAIN.USE_CHECKPOINT."""
    s = cfg.MODEL.SWIN
    return dict(
        img_size=cfg.DATA.IMG_SIZE, patch_size=s.PATCH_SIZE, in_chans=s.IN_CHANS, num_classes=cfg.MODEL.NUM_CLASSES,
        embed_dim=s.EMBED_DIM, depths=tuple(s.DEPTHS), num_heads=tuple(s.NUM_HEADS), window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO, qkv_bias=s.QKV_BIAS, qk_scale=s.QK_SCALE, drop_rate=cfg.MODEL.DROP_RATE,
        attn_drop_rate=0.0, drop_path_rate=cfg.MODEL.DROP_PATH_RATE, ape=s.APE, patch_norm=s.PATCH_NORM,
        use_checkpoint=cfg.TRAIN.USE_CHECKPOINT, shift=s.get("SHIFT", True), rel_pos_bias=s.get("REL_POS_BIAS", True),
        attn_impl=resolve_attn_impl(s.get("ATTN_IMPL", "auto"), device),
    )


class UnknownModelError(ValueError):
    """MODEL.NAME names no timm model (MODEL.TYPE timm)."""


def build_model(cfg: Any, device: Optional[torch.device] = None) -> nn.Module:
    """The model cfg.MODEL.TYPE names: "swin" (architecture from MODEL.SWIN.*, never from MODEL.NAME) or "timm"
    (any timm model MODEL.NAME, for the paper's baselines). `device` only chooses the attention kernel."""
    kind = cfg.MODEL.TYPE
    if kind == "swin":
        return SwinTransformer(**swin_kwargs(cfg, device))
    if kind == "timm":
        import difflib

        import timm

        if not timm.is_model(cfg.MODEL.NAME):
            close = difflib.get_close_matches(cfg.MODEL.NAME, timm.list_models(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else " `timm.list_models('pattern*')` lists them."
            raise UnknownModelError(f"MODEL.NAME {cfg.MODEL.NAME!r} is not a timm model (MODEL.TYPE timm).{hint}")
        return timm.create_model(cfg.MODEL.NAME, pretrained=False, num_classes=cfg.MODEL.NUM_CLASSES,
                                 drop_rate=cfg.MODEL.DROP_RATE, drop_path_rate=cfg.MODEL.DROP_PATH_RATE)
    raise ValueError(f"MODEL.TYPE must be 'swin' or 'timm', got {kind!r}")
