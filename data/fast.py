"""Decode + transform in one step, cheaper than decoding and then running the Compose; bitwise the same results
unless an approximate option is chosen.

`FastPipeline(transform)` wraps a Compose built by `build_transform` and runs it on an encoded image:
- RandomResizedCrop: the crop is drawn from the JPEG header size before decoding (the same RNG draws as
  timm's transform, so every later augmentation is unchanged). Two options (`FastOptions`) trade bitwise
  equality for speed, for training only:
  `draft`: when the crop box is at least 2x, 4x or 8x the output size, the JPEG is decoded at 1/2, 1/4 or 1/8
  scale (PIL `Image.draft`, DCT scaling) and the crop is resized from there;
  `resize`: the crop is resized by torch's uint8 antialiased kernels (the filters and support of PIL's
  bilinear/bicubic resampling, written straight into an RGB buffer), 3-4x faster than PIL's resize (draft-decoded
  crops keep PIL's resize from their fractional box). Both resize in two passes with 8-bit rounding in between,
  torch always horizontal first while Pillow 13 runs some shapes vertical first; where bicubic overshoot is clamped
  between the passes the order shows. Natural images differ by at most 2-3 levels out of 255 (0.05 on average),
  bilinear by at most 2; bicubic on sharp high-contrast edges (binary noise, line art) by up to ~30 levels,
  about 1 on average: a different rounding of the same resampling, not a different augmentation.
  With both off the result is bitwise identical to the plain transform.
- ToTensor + Normalize are fused into one in-place pass with the same float32 operations (bitwise equal).
- `uint8` (training and evaluation): the pipeline stops before ToTensor and returns the H x W x 3 uint8 image;
  `DeviceNormalize` (from `device_part()`) then runs ToTensor + Normalize and what follows (timm's
  RandomErasing) on a whole batch on the training device, like timm's prefetcher: a quarter of the bytes to
  collate, pin and copy, and no float work in the loader workers. The same float32 operations, so the same
  bits as the plain transform, except that RandomErasing draws its boxes and noise from the training
  process's RNGs (seeded per rank and epoch, saved in checkpoints) instead of the per-sample seed.
Evaluation images never take the approximate paths, so reported accuracy uses the exact official preprocessing.
"""
from __future__ import annotations

import copy
import io
import random
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms as T

from data.errors import CorruptImageError
from data.images import DECODE_ERRORS, to_rgb


def to_normalized_tensor(img: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """ToTensor then Normalize for an 8-bit RGB image, in one buffer (same float32 ops, same bits)."""
    arr = np.asarray(img)  # read-only view of PIL's buffer: numpy converts it, torch never wraps it
    out = torch.empty((3, arr.shape[0], arr.shape[1]), dtype=torch.float32)
    np.copyto(out.numpy(), arr.transpose(2, 0, 1), casting="unsafe")  # uint8 -> float32 is exact
    return out.div_(255).sub_(mean).div_(std)


# uint8 antialiased resize kernels that write into a given (here: channels-last, i.e. RGB-interleaved) buffer.
_AA_RESIZE = {
    T.InterpolationMode.BILINEAR: torch.ops.aten._upsample_bilinear2d_aa.out,
    T.InterpolationMode.BICUBIC: torch.ops.aten._upsample_bicubic2d_aa.out,
}


@dataclass(frozen=True)
class FastOptions:
    """What FastPipeline may do beyond the bitwise-exact default; see the module doc. `draft` and `resize` are
    approximate and for training crops only; `uint8` is exact (same bits after `device_part()`, random erasing
    aside), for training and evaluation, and changes the output to H x W x 3 uint8."""

    draft: bool = False  # reduced-scale JPEG decoding for large crops
    resize: bool = False  # torch's uint8 antialiased resize instead of PIL's
    uint8: bool = False  # return uint8 H x W x 3; normalization (and random erasing) run in `device_part()`


def resized_crop_uint8(img: Image.Image, i: int, j: int, h: int, w: int, size: tuple[int, int],
                       interp: T.InterpolationMode) -> Image.Image:
    """`F.resized_crop(img, i, j, h, w, size, interp)` (crop, then antialiased resize) for an RGB image and
    bilinear/bicubic, through torch's uint8 kernels: PIL's filters, its own pass order and rounding (module doc)."""
    crop = torch.from_numpy(np.array(img.crop((j, i, j + w, i + h))))  # h x w x 3 (a view as 1 x 3 x h x w below)
    out = torch.empty((size[0], size[1], 3), dtype=torch.uint8)
    _AA_RESIZE[interp](crop.permute(2, 0, 1)[None], list(size), False, None, None, out=out.permute(2, 0, 1)[None])
    return Image.fromarray(out.numpy())


def draft_factor(crop_w: int, crop_h: int, out_w: int, out_h: int) -> int:
    """Largest JPEG reduction (1, 2, 4, 8) that keeps the crop at least as large as the output."""
    r = 1
    while r < 8 and crop_w >= 2 * r * out_w and crop_h >= 2 * r * out_h:
        r *= 2
    return r


class FastPipeline:
    """Encoded image (path, bytes or file object) -> the tensor `transform` would give for its decoded image."""

    def __init__(self, transform: Callable, options: FastOptions = FastOptions()) -> None:
        steps = list(getattr(transform, "transforms", [transform]))
        self.crop = steps.pop(0) if steps and isinstance(steps[0], RandomResizedCropAndInterpolation) else None
        self.options = options
        self.middle, self.norm, self.tail = steps, None, []
        for k in range(len(steps) - 1):
            if isinstance(steps[k], (MaybeToTensor, T.ToTensor)) and isinstance(steps[k + 1], T.Normalize):
                n = steps[k + 1]
                self.norm = (torch.as_tensor(n.mean, dtype=torch.float32)[:, None, None],
                             torch.as_tensor(n.std, dtype=torch.float32)[:, None, None])
                self.middle, self.tail = steps[:k], steps[k + 2 :]
                break
        # uint8 output needs the ToTensor + Normalize pair and nothing after it but batch-capable RandomErasing
        self.uint8 = options.uint8 and self.norm is not None and all(isinstance(t, RandomErasing) for t in self.tail)

    def device_part(self) -> DeviceNormalize | None:
        """What turns a batch of this pipeline's outputs into the transform's result on the device (uint8
        mode), or None when the outputs already are the result."""
        return DeviceNormalize(*self.norm, self.tail) if self.uint8 else None

    def _open_cropped(self, fp: BinaryIO) -> Image.Image:
        img = Image.open(fp)
        if self.crop is None:
            img.load()
            return to_rgb(img)
        c = self.crop
        i, j, h, w = c.get_params(img, c.scale, c.ratio)  # needs only the header size
        interp = random.choice(c.interpolation) if isinstance(c.interpolation, (tuple, list)) else c.interpolation
        out_h, out_w = c.size
        r = draft_factor(w, h, out_w, out_h) if self.options.draft and img.format == "JPEG" else 1
        if r == 1:
            img.load()
            if self.options.resize and interp in _AA_RESIZE:
                return resized_crop_uint8(to_rgb(img), i, j, h, w, c.size, interp)
            return F.resized_crop(to_rgb(img), i, j, h, w, list(c.size), interp)
        full_w, full_h = img.size
        img.draft("RGB", (full_w // r, full_h // r))  # PIL picks the largest scale that stays >= this
        img.load()
        sx, sy = img.size[0] / full_w, img.size[1] / full_h
        box = (j * sx, i * sy, (j + w) * sx, (i + h) * sy)
        return to_rgb(img).resize((out_w, out_h), F.pil_modes_mapping[interp], box=box)

    def __call__(self, source: str | bytes | BinaryIO, name: str) -> Any:
        try:
            if isinstance(source, str):
                with open(source, "rb") as f:
                    img = self._open_cropped(f)
            else:
                fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
                img = self._open_cropped(fp)
        except DECODE_ERRORS as e:
            raise CorruptImageError(f"Cannot decode image {name}: {type(e).__name__}: {e}") from e
        return self._finish(img)

    def from_image(self, img: Image.Image) -> Any:
        """The transform of an already decoded RGB image (in-memory data sets); same result as `transform(img)`."""
        return self._finish(self.crop(img) if self.crop is not None else img)

    def _finish(self, img: Image.Image) -> Any:
        for t in self.middle:
            img = t(img)
        if self.uint8:
            return torch.from_numpy(np.array(img))  # H x W x 3, PIL's own layout: no transposing copy here
        x = to_normalized_tensor(img, *self.norm) if self.norm is not None else img
        for t in self.tail:
            x = t(x)
        return x


class DeviceNormalize:
    """A batch of uint8 images (N x H x W x 3, `FastOptions(uint8=True)`) -> the float32 N x 3 x H x W batch
    that ToTensor + Normalize (+ the tail, e.g. RandomErasing) give, on the batch's device.

    The same float32 operations in the same order as ToTensor and Normalize, so the same bits (the divisors are
    device tensors: CUDA divides by a host scalar through its reciprocal, which could change the last bit).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, tail: list[Callable] = ()) -> None:
        self.stats = torch.stack([torch.full_like(mean, 255.0), mean, std])  # 3 x 3 x 1 x 1
        self.tail = [copy.copy(t) for t in tail]  # RandomErasing: its `device` is set per batch below
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"DeviceNormalize expects uint8 N x H x W x 3 images, got {images.dtype} "
                             f"{tuple(images.shape)}; the data set must be built with FastOptions(uint8=True).")
        stats = self._on.get(images.device)
        if stats is None:
            stats = self._on[images.device] = self.stats.to(images.device)
        n, h, w, c = images.shape
        x = torch.empty((n, c, h, w), dtype=torch.float32, device=images.device)
        x.copy_(images.permute(0, 3, 1, 2)).div_(stats[0]).sub_(stats[1]).div_(stats[2])
        for t in self.tail:
            t.device = images.device
            x = t(x)  # RandomErasing erases each image of the batch independently
        return x
