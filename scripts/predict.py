"""Top-k classes of images with a trained checkpoint.

    python scripts/predict.py --resume output/swin_tiny_patch4_window7_224/default/ckpt_epoch_299.pth img.jpg
    python scripts/predict.py --cfg configs/swin_tiny.yaml --resume swin_tiny_patch4_window7_224.pth photos/

Without --cfg the config saved in the checkpoint is used (official checkpoints hold none: pass --cfg).
The images go through the evaluation transform (resize, center crop, normalise). Class names: ImageNet's
(from timm) for a 1000-class ImageNet model, the training folder names when DATA.DATA_PATH/train exists,
Fashion-MNIST's for that data set, the class index otherwise. An image that cannot be read is listed with its
error and the others are still classified (exit code 1); a bad checkpoint, config or path ends it (exit code 2).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

if __package__ in (None, ""):  # run as `python scripts/predict.py`: make the repository's packages importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from yacs.config import CfgNode  # noqa: E402

from configs import ConfigError, get_config, with_inputs_of  # noqa: E402
from data import DataError, build_transform  # noqa: E402
from data.folder import list_classes  # noqa: E402
from data.images import decode_rgb, is_image_file  # noqa: E402
from engine.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from models import build_model  # noqa: E402
from models.build import with_own_input_config  # noqa: E402
from models.weights import WeightsError, load_weights  # noqa: E402


def image_files(path: str) -> list[str]:
    """`path` itself, or every image file below the folder `path` (sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is neither an image file nor a folder.")
    found = sorted(
        os.path.join(d, n) for d, _, names in os.walk(path, followlinks=True) for n in names if is_image_file(n)
    )
    if not found:
        raise FileNotFoundError(f"No image files (.jpg, .png, ...) found under {path}.")
    return found


def class_names(cfg: CfgNode, num_classes: int) -> list[str] | None:
    """Names of the model's classes, or None when nothing names them."""
    train_dir = os.path.join(cfg.DATA.DATA_PATH, "train") if cfg.DATA.DATA_PATH else ""
    folders = list_classes(train_dir) if train_dir and os.path.isdir(train_dir) else []
    imagenet = None
    if num_classes == 1000 and cfg.DATA.DATASET == "imagenet":
        from timm.data import ImageNetInfo

        imagenet = ImageNetInfo("imagenet-1k")
    if len(folders) == num_classes:
        if imagenet is not None and all(imagenet.has_label(f) for f in folders):
            return [f"{imagenet.label_name_to_description(f)} ({f})" for f in folders]
        return folders
    if imagenet is not None:  # timm's order is the sorted synsets, the order of the training folders
        return [imagenet.index_to_description(i) for i in range(num_classes)]
    if cfg.DATA.DATASET == "fashion_mnist" and num_classes == 10:
        from data.fashion_mnist import CLASSES

        return list(CLASSES)
    return None


def load_config(cfg_file: str | None, ckpt: dict, ckpt_path: str, opts: list[str]) -> CfgNode:
    """--cfg (+ --opts), or the config saved in the checkpoint (+ --opts)."""
    if cfg_file:
        return get_config(cfg_file, opts)
    text = ckpt.get("config")
    if not isinstance(text, str):
        raise ConfigError(f"Checkpoint {ckpt_path} holds no config (e.g. an official release file); pass --cfg.")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return get_config(path, opts)


def predict(
    model: torch.nn.Module, transform, files: list[str], device: torch.device, topk: int, batch_size: int = 32
) -> list[tuple[str, list[tuple[int, float]] | str]]:
    """[(file, [(class index, probability), ...])] with the top-k classes of each image, or (file, error message)
    for an image that cannot be decoded: the others are still classified."""
    decoded: list[tuple[str, torch.Tensor | str]] = []
    for f in files:
        try:
            decoded.append((f, transform(decode_rgb(f, f))))
        except DataError as e:
            decoded.append((f, str(e)))
    good = [(f, x) for f, x in decoded if not isinstance(x, str)]
    top: dict[str, list[tuple[int, float]]] = {}
    for start in range(0, len(good), batch_size):
        chunk = good[start:start + batch_size]
        x = torch.stack([t for _, t in chunk]).to(device)
        with torch.inference_mode():
            probs = model(x).float().softmax(dim=1)
        p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        top.update({f: list(zip(i.tolist(), q.tolist())) for (f, _), i, q in zip(chunk, idx, p)})
    return [(f, x if isinstance(x, str) else top[f]) for f, x in decoded]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cfg", metavar="FILE", help="YAML config of the model (default: the one in the checkpoint)")
    p.add_argument("--resume", required=True, metavar="CKPT", help="checkpoint or weights file (.pth)")
    p.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files or folders of images")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    args = p.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.resume)
        cfg = load_config(args.cfg, ckpt, args.resume, args.opts)
        if args.cfg and isinstance(ckpt.get("config"), str):  # the inputs it trained on, where --cfg leaves them empty
            cfg, _ = with_inputs_of(cfg, ckpt["config"], args.resume)
        cfg, _ = with_own_input_config(cfg)
        files = [f for path in args.images for f in image_files(path)]
        device = resolve_device(args.device)
        model = build_model(cfg, device)
        load_weights(model, _weights(ckpt, args.resume, args.ema), "exact")
        model.to(device).eval()
        names = class_names(cfg, cfg.MODEL.NUM_CLASSES)
        results = predict(model, build_transform(False, cfg), files, device, args.topk, args.batch_size)
    except (CheckpointError, ConfigError, DataError, WeightsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path, top in results:
        print(path)
        if isinstance(top, str):  # unreadable: said here, and in the exit code
            failed += 1
            print(f"  error: {top}")
            continue
        for rank, (idx, prob) in enumerate(top, 1):
            label = names[idx] if names else f"class {idx}"
            print(f"  {rank}. {100 * prob:6.2f}%  {label} [{idx}]")
    if failed:
        print(f"error: {failed} of {len(results)} images could not be read (listed above)", file=sys.stderr)
    return 1 if failed else 0


def _weights(ckpt: dict, path: str, ema: bool) -> dict:
    if ema:
        if not ckpt.get("ema"):
            raise CheckpointError(f"Checkpoint {path} holds no EMA weights; drop --ema.")
        return {"model": ckpt["ema"]}
    return ckpt


if __name__ == "__main__":
    sys.exit(main())
