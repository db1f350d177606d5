"""Decode any image file the data sets may hold into a 3-channel 8-bit RGB PIL image.

torchvision's `default_loader` calls `img.convert("RGB")`, which clips 16-bit images to 255 (all white) and
warns on palette images with transparency; this loader handles those modes explicitly.
"""
from __future__ import annotations

import io
import struct
import zlib
from typing import BinaryIO

import numpy as np
from PIL import Image

from data.errors import CorruptImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# What PIL raises for unreadable, truncated or hostile files (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


def is_image_file(name: str) -> bool:
    """True when the file name has an image extension (case-insensitive), like torchvision's check."""
    return name.lower().endswith(IMG_EXTENSIONS)


def _high_depth_to_uint8(img: Image.Image) -> Image.Image:
    """'I;16*' / 'I' (16-bit data) / 'F' -> 'L', scaling the value range instead of clipping it."""
    arr = np.asarray(img)
    if img.mode == "F":
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        out = np.clip(np.nan_to_num(arr) * scale, 0, 255)
    else:  # 16-bit samples: 65535 -> 255 (x / 257 maps 257*k exactly to k)
        out = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    return Image.fromarray(np.rint(out).astype(np.uint8))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 'RGB'. Alpha is dropped (like torchvision/timm, so pixels match their pipelines)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_uint8(img).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        # Going through RGBA avoids PIL's "palette images with transparency" warning and keeps the colours.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def decode_rgb(source: str | bytes | BinaryIO, name: str) -> Image.Image:
    """Open, fully decode and convert an image to RGB; raise CorruptImageError naming `name` on failure."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:  # we own the file, so closing it leaves the decoded image valid
                return _decode(f)
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        return _decode(source)
    except DECODE_ERRORS as e:
        raise CorruptImageError(f"Cannot decode image {name}: {type(e).__name__}: {e}") from e


def _decode(fp: BinaryIO) -> Image.Image:
    img = Image.open(fp)
    img.load()
    return to_rgb(img)
