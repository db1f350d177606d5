"""Collect eval.json files into the paper's table: Method | Image size | Param (M) | GFLOPs | Top-1 err.

Each measured number stands beside the published one and the difference (measured - published):

    python scripts/make_table.py output/swin_tiny_patch4_window7_224/default output/...   # Markdown
    python scripts/make_table.py output --csv > table.csv        # every eval.json below output/, as CSV

By default the published value is the paper's comparison table where it lists the model and the official
release's table otherwise (`--ref release` always uses the release's). Whether a model was pre-trained on
ImageNet-22K is read from its name, pretrained weights or checkpoint ("22k" in any of them) unless
`--pretrain` says so. Models without a published value show "—".
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class Published:
    method: str
    img_size: int
    params_m: float
    gflops: float
    top1_err: float


def _release(method: str, img_size: int, params_m: float, gflops: float, top1_acc: float) -> Published:
    return Published(method, img_size, params_m, gflops, round(100.0 - top1_acc, 2))


_T, _S = "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224"
_B, _B384 = "swin_base_patch4_window7_224", "swin_base_patch4_window12_384"
_L, _L384 = "swin_large_patch4_window7_224", "swin_large_patch4_window12_384"

# The official release's ImageNet-1K results (top-1 accuracy), keyed by (model, pre-training data).
RELEASE = {
    (_T, "1K"): _release("Swin-T", 224, 28, 4.5, 81.2),
    (_S, "1K"): _release("Swin-S", 224, 50, 8.7, 83.2),
    (_B, "1K"): _release("Swin-B", 224, 88, 15.4, 83.5),
    (_B384, "1K"): _release("Swin-B", 384, 88, 47.1, 84.5),
    (_T, "22K"): _release("Swin-T (22K)", 224, 28, 4.5, 80.9),
    (_S, "22K"): _release("Swin-S (22K)", 224, 50, 8.7, 83.2),
    (_B, "22K"): _release("Swin-B (22K)", 224, 88, 15.4, 85.2),
    (_B384, "22K"): _release("Swin-B (22K)", 384, 88, 47.1, 86.4),
    (_L, "22K"): _release("Swin-L (22K)", 224, 197, 34.5, 86.3),
    (_L384, "22K"): _release("Swin-L (22K)", 384, 197, 103.9, 87.3),
}

# The paper's comparison table (top-1 error), Swin rows and the baselines (timm names where timm has them).
PAPER = {
    (_T, "1K"): Published("Swin-T", 224, 29, 4.5, 18.7),
    (_S, "1K"): Published("Swin-S", 224, 50, 8.7, 17.0),
    (_B, "1K"): Published("Swin-B", 224, 88, 15.4, 16.7),
    (_B384, "1K"): Published("Swin-B", 384, 88, 47, 15.8),
    (_B384, "22K"): Published("Swin-B (22K)", 384, 88, 47, 14.0),
    (_L384, "22K"): Published("Swin-L (22K)", 384, 197, 104, 13.6),
    ("resnet50", "1K"): Published("ResNet50", 224, 25.6, 4.1, 21.5),
    ("resnext50_32x4d", "1K"): Published("ResNeXt50", 224, 25.0, 4.3, 20.5),
    ("deit_small_patch16_224", "1K"): Published("DeiT-S", 224, 22.1, 4.6, 20.2),
    ("PVT-S", "1K"): Published("PVT-S", 224, 24.5, 3.8, 20.2),
    ("resnet101", "1K"): Published("ResNet101", 224, 44.7, 7.9, 20.2),
    ("resnext101_32x4d", "1K"): Published("ResNeXt101", 224, 44.2, 8.0, 19.4),
    ("ViT-S", "1K"): Published("ViT-S", 224, 48.8, 9.9, 19.2),
    ("PVT-M", "1K"): Published("PVT-M", 224, 44.2, 6.7, 18.8),
    ("resnext101_64x4d", "1K"): Published("ResNeXt101", 224, 83.5, 15.6, 18.5),
    ("ViT-B", "1K"): Published("ViT-B", 224, 86.6, 17.6, 18.2),
    ("deit_base_patch16_224", "1K"): Published("DeiT-B", 224, 86.6, 17.6, 18.2),
    ("PVT-L", "1K"): Published("PVT-L", 224, 61.4, 9.8, 18.3),
}
BASELINES = [key for key in PAPER if not key[0].startswith("swin_")]

COLUMNS = ["Method", "Image size", "Param (M)", "published", "Δ", "GFLOPs", "published", "Δ",
           "Top-1 err (%)", "published", "Δ", "Run"]


def canonical_name(model: str) -> str:
    """Official variant name of a run's MODEL.NAME (drops timm tags and fine-tune/22k suffixes)."""
    base = model.split(".")[0]
    m = re.match(r"swin_(tiny|small|base|large)_patch4_window\d+_\d+", base)
    return m.group(0) if m else base


def pretrain_of(record: dict) -> str:
    """"22K" when the model name, pretrained weights or checkpoint mention 22k, else "1K"."""
    text = " ".join(str(record.get(k) or "") for k in ("model", "pretrained", "checkpoint")).lower()
    return "22K" if "22k" in text else "1K"


def published_for(record: dict, ref: str, pretrain: str) -> Published | None:
    """The published numbers this record is compared with, or None."""
    if record.get("dataset", "imagenet") != "imagenet":
        return None  # the paper's table is ImageNet-1K validation only
    key = (canonical_name(record["model"]), pretrain_of(record) if pretrain == "auto" else pretrain)
    found = (PAPER.get(key) if ref == "paper" else None) or RELEASE.get(key)
    return found if found is not None and found.img_size == record.get("img_size") else None


def find_eval_files(paths: Iterable[str]) -> list[str]:
    """eval.json files given directly, in a run directory, or anywhere below a directory (sorted)."""
    files: list[str] = []
    for path in paths:
        if os.path.isfile(path):
            files.append(path)
        elif os.path.isfile(os.path.join(path, "eval.json")):
            files.append(os.path.join(path, "eval.json"))
        elif os.path.isdir(path):
            found = sorted(os.path.join(d, "eval.json") for d, _, names in os.walk(path) if "eval.json" in names)
            if not found:
                raise FileNotFoundError(f"No eval.json under {path}; evaluate a checkpoint there first (--eval).")
            files.extend(found)
        else:
            raise FileNotFoundError(f"{path} is neither an eval.json file nor a directory.")
    return files


def _num(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _millions(value: float | None) -> str:
    """Parameters in millions: one decimal, or two significant digits below 1M (a 0.57M model is not "0.6")."""
    return _num(value, 1) if value is None or value >= 1 else f"{value:.2g}"


def _diff(measured: float | None, published: float | None, digits: int) -> str:
    if measured is None or published is None:
        return "—"
    return f"{measured - published:+.{digits}f}"


def row_for(record: dict, run: str, ref: str = "paper", pretrain: str = "auto") -> list[str]:
    """One table row: measured value, published value and difference for params, GFLOPs, top-1 err."""
    pub = published_for(record, ref, pretrain)
    params_m = record["params"] / 1e6 if record.get("params") is not None else None
    gflops, err = record.get("gflops"), record["top1_err"]
    method = pub.method if pub else record["model"]
    if record.get("ema"):
        method += " (EMA)"
    pub_params, pub_gflops, pub_err = (pub.params_m, pub.gflops, pub.top1_err) if pub else (None, None, None)
    return [
        method, str(record["img_size"]),
        _millions(params_m), _num(pub_params, 1), _diff(params_m, pub_params, 1),
        _num(gflops, 2), _num(pub_gflops, 1), _diff(gflops, pub_gflops, 2),
        _num(err, 2), _num(pub_err, 1), _diff(err, pub_err, 2),
        run,
    ]


def baseline_rows() -> list[list[str]]:
    """The paper's baseline rows (published values only)."""
    return [
        [p.method, str(p.img_size), "—", _num(p.params_m, 1), "—", "—", _num(p.gflops, 1), "—", "—",
         _num(p.top1_err, 1), "—", "paper"]
        for p in (PAPER[k] for k in BASELINES)
    ]


def to_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[list[str]], out: Any) -> None:
    header = ["method", "img_size", "params_m", "params_m_published", "params_m_diff", "gflops", "gflops_published",
              "gflops_diff", "top1_err", "top1_err_published", "top1_err_diff", "run"]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if c == "—" else c for c in r] for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, eval.json files or output roots")
    p.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    p.add_argument("--ref", choices=["paper", "release"], default="paper",
                   help="published values: the paper's table (release where it has none) or the release's")
    p.add_argument("--pretrain", choices=["auto", "1K", "22K"], default="auto",
                   help="pre-training data of every run (auto: from names)")
    p.add_argument("--baselines", action="store_true", help="append the paper's baseline rows (ResNet, DeiT...)")
    args = p.parse_args(argv)
    rows = []
    try:
        for path in find_eval_files(args.runs):
            with open(path, encoding="utf-8") as f:
                try:
                    record = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} is not valid JSON ({e}); re-run the evaluation.") from None
            try:
                rows.append(row_for(record, os.path.dirname(path) or ".", args.ref, args.pretrain))
            except KeyError as e:
                raise ValueError(f"{path} lacks the field {e}; it is not an eval.json of this project.") from None
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.baselines:
        rows += baseline_rows()
    if args.csv:
        write_csv(rows, sys.stdout)
    else:
        sys.stdout.write(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
