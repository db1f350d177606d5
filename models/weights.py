"""Load Swin weights from the official, timm or torchvision layout, exactly or for fine-tuning; other models
(PVT v1, the timm baselines) load their own layout (the official PVT release's, timm's) unchanged.

Files are read with torch.load(weights_only=True): nothing in a checkpoint is ever run as code. "exact" mode
demands every parameter with its shape; "finetune" mode resizes relative position bias tables and the
absolute position embedding (bicubic, as the official fine-tuning code), maps a 21,841-way IN-22K head to the
1,000 IN-1K classes, and re-initialises any other head that does not fit.
"""
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .imagenet22k import IN22K_NUM_CLASSES, in22k_to_in1k_indices
from .swin import SwinTransformer
from .swinv2 import SwinTransformerV2, swinv2_from_timm

log = logging.getLogger(__name__)

MODES = ("exact", "finetune")
_BUFFERS = ("relative_position_index", "attn_mask", "relative_coords_table")  # derived, never loaded
_HEAD = ("head.weight", "head.bias")


def _head_keys(model: nn.Module) -> tuple:
    """State-dict keys of the classifier: Swin's and PVT's `head`, a timm model's get_classifier() (ResNet's `fc`)."""
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else getattr(model, "head", None)
    if not isinstance(classifier, nn.Module):
        return _HEAD
    owned = {id(p) for p in classifier.parameters()}
    return tuple(k for k, p in model.named_parameters() if id(p) in owned) or _HEAD


class WeightsError(RuntimeError):
    """A weights file or state dict that cannot be loaded into the model as asked."""


@dataclass
class LoadReport:
    """What load_weights did with every key (official names)."""

    source: str
    layout: str
    mode: str
    loaded: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)
    remapped: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    reinitialized: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.layout} layout, {self.mode} mode)"]
        for name in ("resized", "remapped", "skipped", "reinitialized"):
            keys = getattr(self, name)
            if keys:
                more = f", ... (+{len(keys) - 6} more)" if len(keys) > 6 else ""
                lines.append(f"  {name} ({len(keys)}): {', '.join(keys[:6])}{more}")
        return "\n".join(lines)


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The tensors of a checkpoint file, loaded without running any code stored in it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):  # timm's Hub files: tensors only by construction
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(
            f"refusing to load {path}: it holds pickled Python objects, not only tensors, and unpickling them "
            f"could run code. Re-save it as a plain state dict (torch.save(model.state_dict(), ...)). ({err})"
        ) from None


def _unwrap(obj: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    for key in ("model", "state_dict", "module"):  # official / Lightning-style / DeepSpeed-style wrappers
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}  # DistributedDataParallel prefix
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _from_timm(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # timm >= 0.9 downsamples at the START of stages 1..3 and wraps the classifier in head.fc
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers_(\d+)\.", r"layers.\1.", k)
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k.replace("head.fc.", "head.")] = v
    return out


def _from_torchvision(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # features.0 = conv + LayerNorm, features.2i+1 = blocks of stage i, features.2i+2 = its PatchMerging;
    # torchvision concatenates the 2x2 neighbourhood in the official order, so no channel permutation
    out = {}
    for k, v in sd.items():
        k = k.replace("features.0.0.", "patch_embed.proj.").replace("features.0.2.", "patch_embed.norm.")
        m = re.match(r"features\.(\d+)\.(.*)", k)
        if m:
            n, rest = int(m.group(1)), m.group(2)
            k = f"layers.{(n - 1) // 2}.blocks.{rest}" if n % 2 else f"layers.{n // 2 - 1}.downsample.{rest}"
        out[k.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")] = v
    return out


def _from_torchvision_v2(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    # as Swin v1's, plus: torchvision keeps one (q, k, v) bias and zeroes its k part on every forward, the official
    # SwinV2 keeps q_bias and v_bias only
    out = {}
    for k, v in _from_torchvision(sd).items():
        if k.endswith(".attn.qkv.bias"):
            dim = v.shape[0] // 3
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = v[:dim], v[2 * dim:]
        else:
            out[k] = v
    return out


def _detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    if "features.0.0.weight" in sd:
        return "torchvision"
    if "head.fc.weight" in sd or any(k.startswith("layers_") for k in sd):
        return "timm"
    if not any(".downsample." in k and k.startswith("layers.0.") for k in sd) and any(
        k.startswith("layers.1.downsample.") for k in sd
    ):
        return "timm"  # headless timm checkpoint: stage 0 has no downsample there
    return "official"


_CONVERTERS: Dict[str, Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]] = {
    "official": lambda sd: sd, "timm": _from_timm, "torchvision": _from_torchvision, "own": lambda sd: sd,
}


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """Bicubic resize of a ((2W'-1)^2, heads) bias table to window W, on the (2W-1, 2W-1) grid of each head."""
    src = int(round(table.shape[0] ** 0.5))
    grid = table.float().permute(1, 0).reshape(1, -1, src, src)  # 1, heads, 2W'-1, 2W'-1
    grid = F.interpolate(grid, size=(2 * window - 1, 2 * window - 1), mode="bicubic", align_corners=False)
    return grid.reshape(table.shape[1], -1).permute(1, 0).to(table.dtype)  # (2W-1)^2, heads


def resize_pos_embed(pos: torch.Tensor, num_patches: int, prefix: int = 0) -> torch.Tensor:
    """Bicubic resize of a (1, prefix + L, C) absolute position embedding over a square grid of L patches to
    num_patches patches; the `prefix` entries (class or distillation tokens) are kept as they are."""
    head, pos = pos[:, :prefix], pos[:, prefix:]
    src, dst = int(round(pos.shape[1] ** 0.5)), int(round(num_patches**0.5))
    grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)  # 1, C, S, S
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return torch.cat((head, grid.permute(0, 2, 3, 1).reshape(1, dst * dst, -1).to(pos.dtype)), dim=1)  # 1, p + L', C


def _token_prefix(src_len: int, dst_len: int) -> Optional[int]:
    """How many leading non-patch tokens (0-2: none, class, class + distillation) two position embeddings share
    such that both remainders are square patch grids; None if there is no such number."""
    for prefix in range(3):
        a, b = src_len - prefix, dst_len - prefix
        if a > 0 and b > 0 and round(a**0.5) ** 2 == a and round(b**0.5) ** 2 == b:
            return prefix
    return None


def _layout_for(model: nn.Module, sd: Mapping[str, torch.Tensor], name: str) -> str:
    """The layout to convert from: for Swin v1 and SwinV2 the official, timm or torchvision one; other models load
    their own layout unchanged."""
    if isinstance(model, (SwinTransformer, SwinTransformerV2)):
        return _detect_layout(sd)
    return "own"


def load_weights(
    model: nn.Module, source: Union[str, os.PathLike, Mapping[str, Any]], mode: str = "exact"
) -> LoadReport:
    """Load weights (a path or a state dict) into model and report what happened: Swin v1 and SwinV2 take the
    official, timm or torchvision layout (SwinV2 at any window size: its position bias has no table to resize), any
    other model its own layout."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "state dict"
    raw = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else source
    layout = _layout_for(model, _unwrap(raw), name)
    convert = _CONVERTERS[layout]
    if isinstance(model, SwinTransformerV2) and layout in ("timm", "torchvision"):
        convert = swinv2_from_timm if layout == "timm" else _from_torchvision_v2
    sd = convert(_unwrap(raw))
    report = LoadReport(name, layout, mode)
    report.skipped = sorted(k for k in sd if k.rsplit(".", 1)[-1] in _BUFFERS)
    sd = {k: v for k, v in sd.items() if k not in report.skipped}
    target = model.state_dict()
    if mode == "finetune":
        sd = _adapt(model, sd, target, report)
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
              for k in sd if k in target and sd[k].shape != target[k].shape]
    if mode == "finetune":
        report.skipped += unexpected
        unexpected = []
    if missing or unexpected or shapes:
        parts = [f"{name} ({layout} layout) does not fit the model in {mode} mode"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if keys:
                more = f" ... and {len(keys) - 5} more" if len(keys) > 5 else ""
                parts.append(f"{title} ({len(keys)}): " + "; ".join(keys[:5]) + more)
        parts.append(f"check the architecture (the {_arch_keys(model)} keys: pass the --cfg the weights were trained "
                     "with), or train from them with --pretrained, which adapts another window size, image size or "
                     "head")
        raise WeightsError("\n".join(parts))
    model.load_state_dict({k: sd[k] for k in target}, strict=True)
    report.loaded = [k for k in target if k not in report.reinitialized]
    log.info("%s", report)
    return report


def _arch_keys(model: nn.Module) -> str:
    """Where the config sets this model's architecture, for error messages."""
    if isinstance(model, SwinTransformerV2):
        return "MODEL.SWINV2.*"
    if isinstance(model, SwinTransformer):
        return "MODEL.SWIN.*"
    return "MODEL.NAME and DATA.IMG_SIZE"


def _adapt(model: nn.Module, sd: Dict[str, torch.Tensor], target: Dict[str, torch.Tensor],
           report: LoadReport) -> Dict[str, torch.Tensor]:
    """Fine-tuning adaptations: resized position tables, 22K -> 1K head, re-initialised other heads."""
    sd = dict(sd)
    for k, v in sd.items():
        if k not in target or v.shape == target[k].shape:
            continue
        if k.endswith("relative_position_bias_table") and v.shape[1] == target[k].shape[1]:
            window = (int(round(target[k].shape[0] ** 0.5)) + 1) // 2
            sd[k] = resize_bias_table(v, window)
            report.resized.append(k)
        elif (k.rsplit(".", 1)[-1].startswith(("absolute_pos_embed", "pos_embed")) and v.dim() == 3
              and v.shape[2] == target[k].shape[2]):  # Swin's, ViT's, PVT's pos_embed1..4
            prefix = _token_prefix(v.shape[1], target[k].shape[1])
            if prefix is not None:
                sd[k] = resize_pos_embed(v, target[k].shape[1] - prefix, prefix)
                report.resized.append(k)
    head = _head_keys(model)
    head_shapes = [(sd[k].shape, target[k].shape) for k in head if k in sd and k in target]
    if any(a != b for a, b in head_shapes) or any(k in target and k not in sd for k in head):
        if head_shapes and head_shapes[0][0][0] == IN22K_NUM_CLASSES and head_shapes[0][1][0] == 1000:
            rows = torch.tensor(in22k_to_in1k_indices())
            for k in head:
                if k in sd:
                    sd[k] = sd[k][rows]
                    report.remapped.append(k)
        else:
            log.warning("head of the checkpoint does not fit the model's %d classes: re-initialising it",
                        getattr(model, "num_classes", -1))
            for k in head:
                if k in target:
                    sd[k] = target[k]
                    report.reinitialized.append(k)
    return sd
