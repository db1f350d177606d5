"""The one mapping from the config to a model's keyword arguments."""
import hashlib
import inspect
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .pvt import PVT_ZOO, create_pvt
from .swin import SwinTransformer, stage_resolution
from .swinv2 import SWINV2_ZOO, SwinTransformerV2
from .zoo import ZOO, claimed_variant

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
        appearance=s.get("APPEARANCE", True),
        attn_impl=resolve_attn_impl(s.get("ATTN_IMPL", "auto"), device),
    )


def swinv2_kwargs(cfg: Any) -> Dict[str, Any]:
    """SwinTransformerV2 keyword arguments from cfg.MODEL.SWINV2.*, MODEL.*, DATA.IMG_SIZE and TRAIN.USE_CHECKPOINT."""
    s = cfg.MODEL.SWINV2
    return dict(
        img_size=cfg.DATA.IMG_SIZE, patch_size=s.PATCH_SIZE, in_chans=s.IN_CHANS, num_classes=cfg.MODEL.NUM_CLASSES,
        embed_dim=s.EMBED_DIM, depths=tuple(s.DEPTHS), num_heads=tuple(s.NUM_HEADS), window_size=s.WINDOW_SIZE,
        mlp_ratio=s.MLP_RATIO, qkv_bias=s.QKV_BIAS, drop_rate=cfg.MODEL.DROP_RATE, drop_path_rate=cfg.MODEL.DROP_PATH_RATE,
        ape=s.APE, patch_norm=s.PATCH_NORM, use_checkpoint=cfg.TRAIN.USE_CHECKPOINT,
        pretrained_window_sizes=tuple(s.PRETRAINED_WINDOW_SIZES), attn_impl=s.ATTN_IMPL,
    )


# The SwinTransformer / SwinTransformerV2 keywords that change the network (and its weights' shapes or meaning); the
# rest (classes, drop rates, checkpointing, kernel choice) do not make it another architecture.
ARCH_KEYS = ("img_size", "patch_size", "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
             "qkv_bias", "qk_scale", "ape", "patch_norm", "shift", "rel_pos_bias", "appearance")
ARCH_KEYS_V2 = ("img_size", "patch_size", "in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
                "qkv_bias", "ape", "patch_norm", "pretrained_window_sizes")
# Keys added after custom names existed: in the name's digest only when not at this value, so that the runs named
# before keep their names (and resume).
_DIGEST_SINCE = {"appearance": True}


def _config_key(kwarg: str, section: str) -> str:
    return "DATA.IMG_SIZE" if kwarg == "img_size" else f"{section}.{kwarg.upper()}"


def run_name(cfg: Any) -> Tuple[str, List[str]]:
    """The name a run goes by (it names the run directory and the reports) and why, when it is not MODEL.NAME.

    MODEL.NAME, unless it claims a registered Swin or SwinV2 variant (swin_tiny_patch4_window7_224, its _22k /
    _finetune forms; swinv2_tiny_patch4_window8_256, ...) whose architecture MODEL.SWIN.* / MODEL.SWINV2.* or
    DATA.IMG_SIZE changed: such a run is not that variant, so it goes by
    swin[v2]_custom_patch<P>_window<W>_<IMG>_<digest of the architecture>, and the list says what differs
    ("MODEL.SWIN.EMBED_DIM 16 (swin_tiny_patch4_window7_224 has 96)", ...).
    """
    if cfg.MODEL.TYPE == "swin":
        family, table, cls, keys, section, actual = "swin", ZOO, SwinTransformer, ARCH_KEYS, "MODEL.SWIN", None
    elif cfg.MODEL.TYPE == "swinv2":
        family, table, cls, keys, section = "swinv2", SWINV2_ZOO, SwinTransformerV2, ARCH_KEYS_V2, "MODEL.SWINV2"
    else:
        return cfg.MODEL.NAME, []
    claimed = claimed_variant(cfg.MODEL.NAME, table)
    if claimed is None:
        return cfg.MODEL.NAME, []
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    expected = {**defaults, **table[claimed].kwargs()}
    actual = swin_kwargs(cfg) if family == "swin" else swinv2_kwargs(cfg)
    compared = dict(actual)
    if family == "swinv2":  # None, zeros and each stage's own window all mean "this model's own window"
        expected["pretrained_window_sizes"] = _own_windows_as_zero(expected)
        compared["pretrained_window_sizes"] = _own_windows_as_zero(actual)
    changes = [f"{_config_key(k, section)} {_plain(actual[k])} ({claimed} has {_plain(expected[k])})"
               for k in keys if _plain(compared[k]) != _plain(expected[k])]
    if not changes:
        return cfg.MODEL.NAME, []
    named = [(k, _plain(compared[k])) for k in keys if k not in _DIGEST_SINCE or actual[k] != _DIGEST_SINCE[k]]
    digest = hashlib.sha1(repr(named).encode()).hexdigest()[:6]
    name = f"{family}_custom_patch{actual['patch_size']}_window{actual['window_size']}_{actual['img_size']}_{digest}"
    return name, changes


def _own_windows_as_zero(kwargs: Dict[str, Any]) -> Tuple[int, ...]:
    """SwinV2's pretrained_window_sizes with 0 for every stage whose entry is the window that stage runs (the
    model's window, or the map when smaller): the coordinates are then normalized alike, so it is the same model."""
    windows = kwargs["pretrained_window_sizes"] or (0,) * len(kwargs["depths"])
    grid = kwargs["img_size"] // kwargs["patch_size"]
    return tuple(0 if w == min(kwargs["window_size"], stage_resolution(grid, i)) else w for i, w in enumerate(windows))


def _plain(value: Any) -> Any:
    """Sequences as lists, so that a YAML list and a table's tuple compare (and print) alike."""
    return list(value) if isinstance(value, (list, tuple)) else value


class UnknownModelError(ValueError):
    """MODEL.NAME names no model of its MODEL.TYPE."""


# Shapes the paper's tables name that today's timm no longer registers: (timm architecture, keyword overrides).
# "ViT-S" of the Swin and PVT tables is timm's first vit_small_patch16_224 (2020): embed 768, depth 8, 8 heads, MLP
# ratio 3, no qkv bias, 48.8M parameters; timm's current vit_small_patch16_224 is DeiT-S's shape (22M). That first
# version also scaled q.k by 768^-0.5 instead of 64^-0.5; this build keeps timm's per-head scale (same parameters
# and FLOPs).
TIMM_SHAPES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "vit_small_patch16_224_v2020": ("vit_base_patch16_224", dict(depth=8, num_heads=8, mlp_ratio=3.0, qkv_bias=False)),
}


def _timm_model(cfg: Any) -> nn.Module:
    """A timm model by MODEL.NAME (or a TIMM_SHAPES name), without weights, at DATA.IMG_SIZE where it takes one."""
    import difflib

    import timm

    name = cfg.MODEL.NAME
    arch, overrides = TIMM_SHAPES.get(name, (name, {}))
    if not timm.is_model(arch):
        close = difflib.get_close_matches(name, [*timm.list_models(), *TIMM_SHAPES], n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " `timm.list_models('pattern*')` lists them."
        raise UnknownModelError(f"MODEL.NAME {name!r} is not a timm model (MODEL.TYPE timm).{hint}")
    kwargs = dict(pretrained=False, num_classes=cfg.MODEL.NUM_CLASSES, drop_rate=cfg.MODEL.DROP_RATE,
                  drop_path_rate=cfg.MODEL.DROP_PATH_RATE, **overrides)
    with torch.device("meta"):  # free: only to see whether the architecture is built for one input size
        probe = timm.create_model(arch, **kwargs)
    if "img_size" in inspect.signature(type(probe)).parameters:
        kwargs["img_size"] = cfg.DATA.IMG_SIZE
    return timm.create_model(arch, **kwargs)


def own_input_config(cfg: Any) -> Dict[str, Any]:
    """The model's own input normalization and test crop for the keys the config leaves empty (DATA.MEAN, DATA.STD,
    TEST.CROP_PCT): a timm model's pretrained config (that of its default weights, e.g. mean 0.5 for ViT-B's, crop
    0.95 for ResNet-50's), so that evaluating timm's weights sees the inputs they were trained on. Empty for Swin,
    PVT and TIMM_SHAPES models: they use ImageNet's normalization and the official 224/256 crop."""
    if cfg.MODEL.TYPE != "timm" or cfg.MODEL.NAME in TIMM_SHAPES:
        return {}
    import timm

    if not timm.is_model(cfg.MODEL.NAME):
        return {}  # build_model reports the name
    pretrained = timm.models.get_pretrained_cfg(cfg.MODEL.NAME)
    if pretrained is None:
        return {}
    own = {"DATA.MEAN": [float(v) for v in pretrained.mean], "DATA.STD": [float(v) for v in pretrained.std],
           "TEST.CROP_PCT": float(pretrained.crop_pct)}
    given = {"DATA.MEAN": list(cfg.DATA.MEAN), "DATA.STD": list(cfg.DATA.STD), "TEST.CROP_PCT": cfg.TEST.CROP_PCT}
    return {k: v for k, v in own.items() if not given[k]}


def with_own_input_config(cfg: Any) -> Tuple[Any, Dict[str, Any]]:
    """The config with DATA.MEAN, DATA.STD and TEST.CROP_PCT the model's own where it leaves them empty
    (own_input_config), and what was filled in; a run's config.yaml then records them."""
    own = own_input_config(cfg)
    if not own:
        return cfg, own
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in own.items():
        section, name = key.split(".")
        cfg[section][name] = value
    cfg.freeze()
    return cfg, own


def _pvt_model(cfg: Any) -> nn.Module:
    """A PVT v1 size by MODEL.NAME (pvt_tiny, pvt_small, pvt_medium, pvt_large)."""
    if cfg.MODEL.NAME not in PVT_ZOO:
        raise UnknownModelError(f"MODEL.NAME {cfg.MODEL.NAME!r} is not a PVT v1 size (MODEL.TYPE pvt); "
                                f"use one of {', '.join(PVT_ZOO)}.")
    return create_pvt(cfg.MODEL.NAME, img_size=cfg.DATA.IMG_SIZE, num_classes=cfg.MODEL.NUM_CLASSES,
                      drop_rate=cfg.MODEL.DROP_RATE, drop_path_rate=cfg.MODEL.DROP_PATH_RATE)


def build_model(cfg: Any, device: Optional[torch.device] = None) -> nn.Module:
    """The model cfg.MODEL.TYPE names: "swin" / "swinv2" (architecture from MODEL.SWIN.* / MODEL.SWINV2.*, never
    from MODEL.NAME), "pvt" (PVT v1 by size name) or "timm" (a timm model by name, for the paper's baselines). `device` only chooses Swin's attention
    kernel."""
    kind = cfg.MODEL.TYPE
    if kind == "swin":
        return SwinTransformer(**swin_kwargs(cfg, device))
    if kind == "swinv2":
        return SwinTransformerV2(**swinv2_kwargs(cfg))
    if kind == "pvt":
        return _pvt_model(cfg)
    if kind == "timm":
        return _timm_model(cfg)
    raise ValueError(f"MODEL.TYPE must be 'swin', 'swinv2', 'pvt' or 'timm', got {kind!r}")
