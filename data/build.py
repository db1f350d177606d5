"""Config -> data sets, samplers and DataLoaders: the one entry point the engine uses (`build_loaders`).

Engine contract:
- before every training epoch call `loaders.train_sampler.set_epoch(epoch)` (mid-epoch resume:
  `set_epoch(epoch, start_index=k)` skips this rank's first k samples; `len(train_loader)` then counts the
  remaining batches, `train_sampler.num_samples // BATCH_SIZE` is the full epoch). Sample order and every
  augmentation done in the loaders are then a pure function of (SEED, epoch, rank, position) -- see
  data/samplers.py.
- move each image batch to the device, then apply `loaders.train_prepare` / `loaders.val_prepare` when set:
  with DATA.NORMALIZE_ON_DEVICE the loaders yield uint8 N x H x W x 3 images and these turn them into the
  normalized float N x 3 x H x W input (data/fast.py); in training this also does random erasing, which, like
  mixup, draws from the training process's RNGs (seed them per epoch and keep them in checkpoints).
- after every epoch read `corrupt_count(loaders.train_set)` (images skipped with DATA.ON_CORRUPT skip,
  counted in all worker processes of this rank since the last `reset_corrupt_count`), sum it over ranks.
"""
from __future__ import annotations

import logging
import os
import random
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.errors import DataError, NumClassesMismatchError
from data.fashion_mnist import FashionMNIST
from data.fast import FastOptions
from data.folder import FolderDataset
from data.imagenet22k import IN22KDataset
from data.mixup import build_mixup
from data.parquet import ParquetDataset, find_shards
from data.samplers import DistributedTrainSampler, ExactEvalSampler, RASampler, ShardTrainSampler
from data.synthetic import SyntheticDataset
from data.transforms import build_transform
from data.zipped import ZipMapDataset

log = logging.getLogger(__name__)


@dataclass
class Loaders:
    """Everything the engine needs from the data side."""

    train_set: Dataset | None
    val_set: Dataset
    train_loader: DataLoader | None
    val_loader: DataLoader
    train_sampler: Sampler | None  # has set_epoch(epoch, start_index=0)
    mixup_fn: Callable | None  # timm Mixup or None; applied on the device: x, y = mixup_fn(x, y)
    num_classes: int
    train_prepare: Callable | None = None  # images = train_prepare(images) on the device, before mixup
    val_prepare: Callable | None = None  # images = val_prepare(images) on the device


def corrupt_count(dataset: Dataset) -> int:
    """Corrupt images skipped by `dataset` in every process of this rank since its last reset."""
    fn = getattr(dataset, "corrupt_count", None)
    return int(fn()) if fn is not None else 0


def reset_corrupt_count(dataset: Dataset) -> None:
    """Zero the corrupt-image counter of `dataset` (e.g. at the start of an epoch)."""
    fn = getattr(dataset, "reset_corrupt_count", None)
    if fn is not None:
        fn()


def build_dataset(is_train: bool, cfg) -> tuple[Dataset, int]:
    """The training or validation split chosen by DATA.DATASET and DATA.DATA_PATH, and its class count.

    The zip part-cache holds the shard of this process's rank (torch.distributed when initialized).
    """
    dist = torch.distributed
    on = dist.is_available() and dist.is_initialized()
    return _build_dataset(is_train, cfg, dist.get_rank() if on else 0, dist.get_world_size() if on else 1)


def _build_dataset(is_train: bool, cfg, rank: int, world_size: int) -> tuple[Dataset, int]:
    name = cfg.DATA.DATASET
    if name == "synthetic":
        size = cfg.DATA.SYNTHETIC_TRAIN_SIZE if is_train else cfg.DATA.SYNTHETIC_VAL_SIZE
        n = cfg.MODEL.NUM_CLASSES
        return SyntheticDataset(size, n, cfg.DATA.IMG_SIZE, split=0 if is_train else 1), n
    transform = build_transform(is_train, cfg)
    on_corrupt = cfg.DATA.ON_CORRUPT
    # Approximate decoding and resizing of training crops (data/fast.py); never for evaluation.
    fast = FastOptions(draft=is_train and cfg.DATA.DRAFT_DECODE, resize=is_train and cfg.DATA.FAST_RESIZE,
                       uint8=cfg.DATA.NORMALIZE_ON_DEVICE)
    split = "train" if is_train else "val"
    if name in ("imagenet", "imagenet22K") and not cfg.DATA.ZIP_MODE and find_shards(cfg.DATA.DATA_PATH, split):
        ds = ParquetDataset(cfg.DATA.DATA_PATH, split, transform, on_corrupt, cache_mode=cfg.DATA.CACHE_MODE,
                            rank=rank, world_size=world_size, fast=fast)
        log.info("%s: %d parquet shards (%s)", split, len(ds.shards), os.path.dirname(ds.shards[0]),
                 extra={"once_per_job": True})
        return ds, ds.num_classes
    if name == "imagenet":
        if cfg.DATA.ZIP_MODE:
            ds = ZipMapDataset(cfg.DATA.DATA_PATH, "train" if is_train else "val", transform, on_corrupt,
                               cache_mode=cfg.DATA.CACHE_MODE, rank=rank, world_size=world_size, fast=fast)
            return ds, ds.num_classes
        ds = FolderDataset(cfg.DATA.DATA_PATH, "train" if is_train else "val", transform, on_corrupt, fast)
        return ds, ds.num_classes
    if name == "imagenet22K":
        ds = IN22KDataset(cfg.DATA.DATA_PATH, "train" if is_train else "val", transform, on_corrupt, fast)
        return ds, ds.num_classes
    if name == "fashion_mnist":
        ds = FashionMNIST(cfg.DATA.DATA_PATH, is_train, transform, on_corrupt, fast)
        return ds, ds.num_classes
    raise DataError(f"DATA.DATASET {name!r} is unknown; choose imagenet, imagenet22K, fashion_mnist or synthetic.")


def _device_part(dataset: Dataset | None) -> Callable | None:
    fn = getattr(dataset, "device_part", None)
    return fn() if fn is not None else None


def _seed_worker(worker_id: int) -> None:
    """Seed python/numpy from torch's per-worker seed (itself derived from the loader generator)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class Loader(DataLoader):
    """A DataLoader that can end its worker processes on demand (`end_workers`).

    torch ends them when the iterator is collected, or at exit with SIGTERM; when an error leaves the iterator
    held by a traceback and the workers ignore SIGTERM (engine.distributed.StopRequest.shield_workers), Python's
    exit would wait for them forever.
    """

    def __iter__(self):
        it = super().__iter__()
        self._live = weakref.ref(it)
        return it

    def end_workers(self, grace_s: float = 5.0) -> None:
        """Ask the live iterator's workers to leave (torch's own shutdown), then kill those still alive."""
        it = getattr(self, "_live", lambda: None)()
        workers = list(getattr(it, "_workers", ()))
        if not workers:
            return
        try:
            it._shutdown_workers()
        except Exception as e:  # a broken queue must not hide the error that brought us here
            log.debug("DataLoader worker shutdown failed: %s", e)
        for w in workers:
            w.join(timeout=grace_s)
            if w.is_alive():
                w.kill()
                w.join(timeout=grace_s)


def _loader(cfg, dataset: Dataset, sampler: Sampler, device: torch.device, train: bool, rank: int) -> DataLoader:
    workers = cfg.DATA.NUM_WORKERS
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=cfg.DATA.PERSISTENT_WORKERS, prefetch_factor=cfg.DATA.PREFETCH_FACTOR,
                     worker_init_fn=_seed_worker)
    g = torch.Generator()
    g.manual_seed(cfg.SEED + rank)
    return Loader(
        dataset,
        batch_size=cfg.DATA.BATCH_SIZE,
        sampler=sampler,
        num_workers=workers,
        pin_memory=bool(cfg.DATA.PIN_MEMORY and device.type == "cuda"),
        drop_last=train,
        generator=g,
        **extra,
    )


def _train_sampler(cfg, dataset: Dataset, rank: int, world_size: int) -> Sampler:
    n = len(dataset)
    part_cache = getattr(dataset, "cache_mode", "no") == "part"  # the zip and parquet layouts' in-memory shard
    if cfg.AUG.REPEATED_AUG:
        if part_cache and world_size > 1:
            log.warning("AUG.REPEATED_AUG sends images to every rank, so DATA.CACHE_MODE part serves only about "
                        "1/%d of reads from memory; use CACHE_MODE full or no.", world_size,
                        extra={"once_per_job": True})
        return RASampler(n, world_size, rank, cfg.SEED, cfg.AUG.REPEATED_AUG_REPEATS)
    if part_cache:  # the rows this rank holds in memory: strided for the zip layout, whole row groups for parquet
        return ShardTrainSampler(n, world_size, rank, cfg.SEED, shards=getattr(dataset, "part_shards", None))
    return DistributedTrainSampler(n, world_size, rank, cfg.SEED)


def _check_classes(cfg, num_classes: int) -> None:
    if cfg.MODEL.NUM_CLASSES != num_classes:
        raise NumClassesMismatchError(
            f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but the data set {cfg.DATA.DATASET} at "
            f"'{cfg.DATA.DATA_PATH}' has {num_classes} classes; set MODEL.NUM_CLASSES {num_classes} "
            "(or point DATA.DATA_PATH at the intended data)."
        )


def build_loaders(cfg, rank: int, world_size: int, device: torch.device, eval_only: bool = False) -> Loaders:
    """Data sets, samplers, loaders and mixup for this rank. Raises DataError subclasses on bad data/config."""
    train_set = train_loader = train_sampler = mixup_fn = None
    if not eval_only:
        train_set, num_classes = _build_dataset(True, cfg, rank, world_size)
        _check_classes(cfg, num_classes)
        mixup_fn = build_mixup(cfg, num_classes)
        train_sampler = _train_sampler(cfg, train_set, rank, world_size)
        if len(train_sampler) < cfg.DATA.BATCH_SIZE:
            raise DataError(
                f"Rank {rank} gets {len(train_sampler)} training images per epoch, fewer than DATA.BATCH_SIZE "
                f"{cfg.DATA.BATCH_SIZE}, so no full batch exists; lower DATA.BATCH_SIZE or add data."
            )
        train_loader = _loader(cfg, train_set, train_sampler, device, True, rank)
    val_set, val_classes = _build_dataset(False, cfg, rank, world_size)
    _check_classes(cfg, val_classes)
    val_sampler = ExactEvalSampler(len(val_set), world_size, rank)
    val_loader = _loader(cfg, val_set, val_sampler, device, False, rank)
    log.info("Data %s: %s train / %d val images, %d classes, rank %d of %d", cfg.DATA.DATASET,
             "-" if train_set is None else len(train_set), len(val_set), val_classes, rank, world_size)
    return Loaders(train_set, val_set, train_loader, val_loader, train_sampler, mixup_fn, val_classes,
                   _device_part(train_set), _device_part(val_set))
