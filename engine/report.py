"""Evaluation reports: eval.json (every number, machine-readable) and report.md (the short human version).

The record holds what the paper's tables need (top-1/top-5 accuracy and error, params, GFLOPs, image size)
plus where the number came from (checkpoint, EMA or not, data set, device, date, code commit), so
`scripts/make_table.py` can rebuild the paper's table from run directories alone.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import subprocess
from typing import Any, Mapping

import torch
from torch import nn

from engine.checkpoint import atomic_write
from engine.evaluate import device_of
from models.build import run_name
from models.flops import count_flops, count_params

log = logging.getLogger(__name__)

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """`git rev-parse HEAD` of the repository holding this code, or "unknown"; never raises."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_REPO, capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or a hung file system
        return "unknown"
    return out.stdout.strip() or "unknown"


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", getattr(model, "_orig_mod", None))
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def count_gflops(model: nn.Module, img_size: int) -> float | None:
    """Multiply-add GFLOPs of one image (count_flops, batch 1, on the model's device); None on failure.

    The count depends on shapes only, so it runs once on whatever device holds the model, unwrapped from
    DDP / torch.compile so no collective or recompilation is triggered.
    """
    try:
        return float(f"{count_flops(_unwrap(model), img_size) / 1e9:.6g}")
    except Exception as e:  # a report without FLOPs beats a crash after a long evaluation
        log.warning("GFLOPs not counted (%s: %s); the report shows none.", type(e).__name__, e)
        return None


def _field(result: Any, name: str) -> Any:
    return result[name] if isinstance(result, Mapping) else getattr(result, name)


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo with its core count and matrix-relevant ISA flags."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    name, flags = platform.processor() or platform.machine() or device.type, set()
    try:
        info: dict[str, str] = {}
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())  # the first core's lines are enough
        name, flags = info["model name"], set(info.get("flags", "").split())
    except (OSError, KeyError):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({os.cpu_count()} cores{', ' if isa else ''}{' '.join(isa)})"


def build_eval_record(
    cfg: Any,
    model: nn.Module,
    result: Any,
    checkpoint: str,
    ema: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The eval.json record of one evaluation (of `model`, on its device).

    `result` is the engine's EvalResult or a plain dict with the same fields: loss (mean over images),
    correct1, correct5 (counts summed over ranks) and num_images. Accuracies and errors are percentages
    computed from the counts. `extra` (e.g. world_size, img_per_s) is added last.
    """
    device = device_of(model)
    n = int(_field(result, "num_images"))
    correct1, correct5 = int(_field(result, "correct1")), int(_field(result, "correct5"))
    if n <= 0:
        raise ValueError("build_eval_record needs an evaluation of at least one image (num_images is 0).")
    top1, top5 = 100.0 * correct1 / n, 100.0 * correct5 / n
    record = {
        "model": run_name(cfg)[0],
        "img_size": int(cfg.DATA.IMG_SIZE),
        "params": int(count_params(_unwrap(model))),
        "gflops": count_gflops(model, int(cfg.DATA.IMG_SIZE)),
        "top1_acc": top1,
        "top1_err": 100.0 - top1,
        "top5_acc": top5,
        "top5_err": 100.0 - top5,
        "loss": float(_field(result, "loss")),
        "correct1": correct1,
        "correct5": correct5,
        "num_images": n,
        "checkpoint": checkpoint,
        "pretrained": cfg.MODEL.PRETRAINED,
        "ema": bool(ema),
        "dataset": cfg.DATA.DATASET,
        "data_path": cfg.DATA.DATA_PATH,
        "device": str(device),
        "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    record.update(extra or {})
    return record


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def render_report(record: Mapping[str, Any]) -> str:
    """report.md: the record as a few lines of Markdown."""
    weights = "EMA weights" if record.get("ema") else "weights"
    params = record.get("params")
    lines = [
        f"# {record['model']} on {record['dataset']}",
        "",
        "| | |",
        "|---|---|",
        f"| Images | {record['num_images']:,} ({record.get('data_path') or 'no path'}) |",
        f"| Image size | {record['img_size']} |",
        f"| Top-1 accuracy / error | {record['top1_acc']:.3f} % / {record['top1_err']:.3f} % |",
        f"| Top-5 accuracy / error | {record['top5_acc']:.3f} % / {record['top5_err']:.3f} % |",
        f"| Loss | {record['loss']:.4f} |",
        f"| Params | {_fmt(None if params is None else params / 1e6, '.2f')} M ({_fmt(params, ',')}) |",
        f"| GFLOPs | {_fmt(record.get('gflops'), '.2f')} |",
        f"| Checkpoint | `{record['checkpoint']}` ({weights}) |",
        f"| Device | {record['device']} ({record.get('device_name', '')}) |",
        f"| Date / commit | {record['date']} / {record['git_commit']} |",
    ]
    return "\n".join(lines) + "\n"


def write_eval_report(run_dir: str, record: Mapping[str, Any]) -> None:
    """Write <run_dir>/eval.json (the full record) and <run_dir>/report.md, each atomically."""
    eval_json = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    atomic_write(os.path.join(run_dir, "eval.json"), lambda f: f.write(eval_json))
    atomic_write(os.path.join(run_dir, "report.md"), lambda f: f.write(render_report(record).encode("utf-8")))
    log.info(
        "Top-1 %.3f %% (err %.3f), top-5 %.3f %% on %d images; wrote %s",
        record["top1_acc"], record["top1_err"], record["top5_acc"], record["num_images"],
        os.path.join(run_dir, "eval.json"),
    )
