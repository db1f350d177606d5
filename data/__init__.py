"""Data sets, transforms, samplers, mixup and loaders. The engine uses `build_loaders`."""
from data.build import Loaders, build_dataset, build_loaders, corrupt_count, reset_corrupt_count
from data.errors import CorruptImageError, DataError, NumClassesMismatchError
from data.mixup import build_mixup
from data.transforms import build_transform

__all__ = [
    "Loaders", "build_loaders", "build_dataset", "build_transform", "build_mixup", "corrupt_count",
    "reset_corrupt_count", "DataError", "CorruptImageError", "NumClassesMismatchError",
]
