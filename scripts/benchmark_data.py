"""Per-worker throughput of the training input pipeline against the plain timm + torchvision baseline.

    python scripts/benchmark_data.py [--num-images 200] [--repeats 3] [--out output/benchmark_data.json]

Writes real-size 500x375 JPEGs (smooth random content, quality 90) into --dir, then decodes, augments and
collates them with (a) this project's training data set + transform, (b) the baseline: torchvision
ImageFolder with timm's create_transform at the same official settings (float tensors, default collate), and
(c) timm's prefetcher pipeline (create_transform(use_prefetcher=True): uint8 arrays, timm's fast_collate;
normalization and random erasing then run on the GPU in timm's PrefetchLoader). One process and one thread
(like one DataLoader worker), batch by batch (the DataLoader's batched fetch plus collate), the pipelines taking
turns so machine load hits all alike. All draw their augmentations from the same per-sample seeds, so they do
identical crops and RandAugment ops. Prints images/s, CPU ms per image and the ratios, and writes everything
as JSON. With DATA.NORMALIZE_ON_DEVICE (the default) ours hands uint8 images to the training device, which then
normalizes and erases (data/fast.py, `DeviceNormalize`); that batch step's CPU cost per image is reported
too, as it is what a CPU-only run pays for it in the training process.

Then the cost of reading the encoded bytes alone in each layout: the same images as the folder layout, the
zipped layout and parquet shards as the Hugging Face Hub writes them (row groups of 100, snappy), each with
DATA.CACHE_MODE no and full, in training's random order and evaluation's consecutive order.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from timm.data import create_transform  # noqa: E402
from timm.data.loader import fast_collate  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

from configs import get_config  # noqa: E402
from data.base import seeded_map  # noqa: E402
from data.build import build_dataset  # noqa: E402
from data.samplers import sample_seeds  # noqa: E402
from data.transforms import fix_posterize  # noqa: E402
from engine.report import device_name, git_commit  # noqa: E402


def write_images(root: str, n: int, classes: int = 4, size: tuple[int, int] = (500, 375)) -> None:
    """n JPEGs of `size` under root/train/<class>/ (and a one-image val split so the layout is complete)."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        d = os.path.join(root, "train", f"c{i % classes}")
        os.makedirs(d, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        arr = np.asarray(coarse).astype(np.int16) + rng.integers(-20, 21, (h, w, 3), dtype=np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i}.JPEG"), quality=90)
    os.makedirs(os.path.join(root, "val", "c0"), exist_ok=True)
    Image.new("RGB", size).save(os.path.join(root, "val", "c0", "0.JPEG"))


class _SeededBaseline:
    """The baseline data set drawing its augmentations from the same per-sample seeds as ours, so both
    pipelines do identical crops and ops and the comparison measures only the pipeline itself; a batch saves
    and restores the RNG states once, as ours does."""

    def __init__(self, ds: ImageFolder) -> None:
        self.ds = ds

    def __getitems__(self, items: list[tuple[int, int]]) -> list:
        return seeded_map(self.ds.__getitem__, items)


def _time(fetch, collate, batches) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for b in batches:
        collate(fetch(b))
    return time.perf_counter() - w0, time.process_time() - c0


def reader_costs(root: str, repeats: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """CPU ms per image of reading the encoded bytes only (decoding and augmenting are the same for every layout),
    for the training split of the folder under `root` packed into each layout, in training's random order and in
    evaluation's consecutive order. Parquet as the Hub writes it (row groups of 100, snappy, dictionary-encoded)."""
    from data.folder import FolderDataset
    from data.parquet import ParquetDataset, write_shards
    from data.zipped import ZipMapDataset
    from scripts.make_zip import pack_split

    folder = FolderDataset(root, "train")
    with tempfile.TemporaryDirectory() as packed:  # the zip and parquet copies, removed afterwards
        pack_split(folder.split_dir, folder.classes, os.path.join(packed, "train.zip"),
                   os.path.join(packed, "train_map.txt"))
        order = np.random.default_rng(seed).permutation(len(folder))
        write_shards([(open(folder.path(i), "rb").read(), folder.target(i)) for i in order], packed, "train",
                     rows_per_group=100, class_names=folder.classes)
        readers = {
            "folder": lambda i: open(folder.path(i), "rb").read(),
            "zip": ZipMapDataset(packed, "train", cache_mode="no").source,
            "zip_cached": ZipMapDataset(packed, "train", cache_mode="full").source,
            "parquet": ParquetDataset(packed, "train", cache_mode="no").source,
            "parquet_cached": ParquetDataset(packed, "train", cache_mode="full").source,
        }
        return _time_readers(readers, len(folder), repeats, seed)


def _time_readers(readers: dict, n: int, repeats: int, seed: int) -> dict[str, dict[str, float]]:
    """Best CPU ms per image of each reader over indices 0..n-1 in a random and in the consecutive order."""
    orders = {"random": np.random.default_rng(seed + 1).permutation(n).tolist(), "consecutive": list(range(n))}
    best: dict[str, dict[str, float]] = {name: {} for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():  # taking turns, so machine load hits all alike
            for kind, indices in orders.items():
                c0 = time.process_time()
                for i in indices:
                    read(i)
                ms = 1e3 * (time.process_time() - c0) / n
                best[name][kind] = min(ms, best[name].get(kind, ms))
    return best


def _timm_transform(cfg, use_prefetcher: bool):
    t = create_transform(
        input_size=cfg.DATA.IMG_SIZE, is_training=True,
        color_jitter=cfg.AUG.COLOR_JITTER if cfg.AUG.COLOR_JITTER > 0 else None,
        auto_augment=None if cfg.AUG.AUTO_AUGMENT == "none" else cfg.AUG.AUTO_AUGMENT,
        re_prob=cfg.AUG.REPROB, re_mode=cfg.AUG.REMODE, re_count=cfg.AUG.RECOUNT,
        interpolation=cfg.DATA.INTERPOLATION, use_prefetcher=use_prefetcher)
    fix_posterize(t)  # plain timm crashes on recent Pillow now and then (see data/transforms.py)
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--dir", default="", help="image folder (default: a temporary one)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed passes per pipeline")
    parser.add_argument("--batch", type=int, default=32, help="images per batched fetch")
    parser.add_argument("--cfg", default="", help="config file (default: the defaults = Swin-T recipe)")
    parser.add_argument("--out", default="output/benchmark_data.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    readers = None
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or tmp
        if not os.path.isdir(os.path.join(root, "train")):
            write_images(root, args.num_images)
        cfg = get_config(args.cfg or None, ["DATA.DATA_PATH", root, "MODEL.NUM_CLASSES", "4"])
        ours, _ = build_dataset(True, cfg)
        train_dir = os.path.join(root, "train")
        pipelines = {  # name: (batched fetch, collate)
            "baseline": (_SeededBaseline(ImageFolder(train_dir, _timm_transform(cfg, False))).__getitems__,
                         default_collate),
            "timm_prefetcher": (_SeededBaseline(ImageFolder(train_dir, _timm_transform(cfg, True))).__getitems__,
                                fast_collate),
            "ours": (ours.__getitems__, default_collate),
        }
        n = len(ours)
        items = list(zip(range(n), sample_seeds(cfg.SEED, 0, 0, n).tolist()))
        batches = [items[k : k + args.batch] for k in range(0, n, args.batch)]
        for fetch, collate in pipelines.values():
            collate(fetch(items[:2]))  # warm-up (imports, first-call caches)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
        for _ in range(args.repeats):
            for name, (fetch, collate) in pipelines.items():
                runs[name].append(_time(fetch, collate, batches))
        device_part = ours.device_part()
        device_ms = None
        if device_part is not None:  # what ours leaves to the training device, timed on this CPU
            x = torch.stack([img for img, _ in ours.__getitems__(batches[0])])
            device_part(x)
            c0 = time.process_time()
            for _ in range(args.repeats):
                device_part(x)
            device_ms = 1e3 * (time.process_time() - c0) / (args.repeats * len(x))
        readers = reader_costs(root, args.repeats)
    result = {"images": n, "image_size": [500, 375], "repeats": args.repeats, "batch": args.batch,
              "img_size": cfg.DATA.IMG_SIZE, "python": platform.python_version(), "torch": torch.__version__,
              "cpu": device_name(torch.device("cpu")), "git_commit": git_commit(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "normalize_on_device": device_part is not None,
              "device_part_cpu_ms_per_image": device_ms, "read_cpu_ms_per_image": readers}
    for name, r in runs.items():
        wall = min(w for w, _ in r)  # best pass: least disturbed by other load
        cpu = min(c for _, c in r)
        result[name] = {"images_per_s": n / wall, "cpu_ms_per_image": 1e3 * cpu / n, "passes": r}
        print(f"{name:16s} {n / wall:8.1f} images/s per worker   {1e3 * cpu / n:6.2f} CPU ms/image")
    for ref, suffix in (("baseline", ""), ("timm_prefetcher", "_vs_timm_prefetcher")):
        result["speedup" + suffix] = result["ours"]["images_per_s"] / result[ref]["images_per_s"]
        result["cpu_cost_ratio" + suffix] = result[ref]["cpu_ms_per_image"] / result["ours"]["cpu_ms_per_image"]
        print(f"ratio ours/{ref}: {result['speedup' + suffix]:.2f}x images/s, "
              f"{result['cpu_cost_ratio' + suffix]:.2f}x lower CPU cost")
    if device_ms is not None:
        print(f"ours' batch step on the device (normalize + random erasing), here on the CPU: {device_ms:.3f} ms/image")
    print("reading the encoded bytes, CPU ms/image (random order / consecutive order):")
    for name, costs in readers.items():
        print(f"  {name:16s} {costs['random']:7.3f} / {costs['consecutive']:7.3f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
