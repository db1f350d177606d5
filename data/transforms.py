"""Training and evaluation transforms, matching the official Swin `build_transform` (via timm)."""
from __future__ import annotations

import logging
from typing import Callable

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_aa
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms

log = logging.getLogger(__name__)


def _color_jitter(cfg) -> float | None:
    return cfg.AUG.COLOR_JITTER if cfg.AUG.COLOR_JITTER > 0 else None


def _auto_augment(cfg) -> str | None:
    aa = cfg.AUG.AUTO_AUGMENT
    return None if not aa or aa.lower() == "none" else aa


def _warn_jitter_ignored(cfg) -> None:
    """timm drops ColorJitter when RandAugment is on (unless the policy has '3a'); said once per training
    transform, which a run builds once."""
    aa = _auto_augment(cfg)
    if aa and _color_jitter(cfg) is not None and "3a" not in aa:
        log.warning("AUG.COLOR_JITTER=%s is a no-op while AUG.AUTO_AUGMENT=%s is on (as in timm and the official "
                    "release); set AUG.AUTO_AUGMENT none to use colour jitter.", cfg.AUG.COLOR_JITTER, aa,
                    extra={"once_per_job": True})


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, also for 0 bits: RandAugment 'inc1' asks for 0 bits at magnitude 10 (about 2% of
    Posterize draws under m9-mstd0.5), which recent Pillow (13 here) rejects with ValueError; older Pillow
    returned a black image, which this reproduces."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_aa.posterize(img, bits_to_keep)


def fix_posterize(transform: Callable) -> None:
    """Swap timm's posterize for `posterize_any_bits` in every RandAugment/AutoAugment op of `transform`."""
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is timm_aa.posterize:
                op.aug_fn = posterize_any_bits


def normalization(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input normalization: DATA.MEAN / DATA.STD, or ImageNet's where they are empty."""
    mean, std = cfg.DATA.get("MEAN", []), cfg.DATA.get("STD", [])
    return tuple(mean) or IMAGENET_DEFAULT_MEAN, tuple(std) or IMAGENET_DEFAULT_STD


def build_transform(is_train: bool, cfg) -> Callable:
    """PIL RGB image -> normalized float tensor 3 x IMG_SIZE x IMG_SIZE, as the official release builds it."""
    size = cfg.DATA.IMG_SIZE
    mean, std = normalization(cfg)
    resize_im = size > 32
    if is_train:
        _warn_jitter_ignored(cfg)
        t = create_transform(
            input_size=size,
            is_training=True,
            color_jitter=_color_jitter(cfg),
            auto_augment=_auto_augment(cfg),
            re_prob=cfg.AUG.REPROB,
            re_mode=cfg.AUG.REMODE,
            re_count=cfg.AUG.RECOUNT,
            hflip=cfg.AUG.HFLIP,
            interpolation=cfg.DATA.INTERPOLATION,
            mean=mean,
            std=std,
        )
        fix_posterize(t)
        if not resize_im:  # small images (CIFAR-like): padded random crop instead of RandomResizedCrop
            # pad_if_needed: a no-op for images of at least IMG_SIZE (the official case), no crash below it
            pad = cfg.AUG.SMALL_CROP_PADDING
            t.transforms[0] = transforms.RandomCrop(size, padding=pad or None, pad_if_needed=True)  # 0: no copy
        return t

    # The official eval resize maps 'random' (a training-only choice) to bilinear.
    interp = str_to_interp_mode("bilinear" if cfg.DATA.INTERPOLATION == "random" else cfg.DATA.INTERPOLATION)
    t: list = []
    if resize_im:
        if cfg.TEST.CROP:
            crop_pct = cfg.TEST.get("CROP_PCT", 0.0)
            resize = int(size / crop_pct) if crop_pct else int((256 / 224) * size)  # official: 224/256
            t += [transforms.Resize(resize, interpolation=interp), transforms.CenterCrop(size)]
        else:
            t.append(transforms.Resize((size, size), interpolation=interp))
    else:
        # Official: no resize. The center crop is a no-op at the native size and makes 28x28 Fashion-MNIST
        # collate at IMG_SIZE 32 too (padding like the training crop).
        t.append(transforms.CenterCrop(size))
    t += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(t)
