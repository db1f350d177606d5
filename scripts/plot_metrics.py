"""Learning curves of a run from its metrics.jsonl: training loss, learning rate, validation top-1 error.

    python scripts/plot_metrics.py output/swin_tiny_patch4_window7_224/default [--out curves.png]

A resumed run appends to metrics.jsonl and repeats the steps after its last checkpoint; the last record of
each step (and of each epoch) wins, so the curves show the run that produced the final weights. A line cut
short by a kill is skipped with a note.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_EMA_ERR = re.compile(r"^ema.*top1_err$")


def read_metrics(path: str) -> tuple[list[dict], list[dict], int]:
    """(step records sorted by step, epoch records sorted by epoch, number of unreadable lines)."""
    steps: dict[int, dict] = {}
    epochs: dict[int, dict] = {}
    bad = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if record.get("kind") == "step" and "step" in record:
                steps[int(record["step"])] = record
            elif record.get("kind") == "epoch" and "epoch" in record:
                epochs[int(record["epoch"])] = record
    return [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)], bad


def _series(records: list[dict], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    pairs = [(r[x_key], r[y_key]) for r in records if r.get(y_key) is not None and r.get(x_key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(steps: list[dict], epochs: list[dict], out: str, title: str = "") -> "Figure":
    """Write a PNG with three panels: loss (per step and per epoch), learning rate, top-1 error per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_err = fig.subplots(1, 3)

    ax_loss.plot(*_series(steps, "step", "loss"), lw=0.6, alpha=0.5, label="train loss (step)")
    ax_loss.plot(*_series(epochs, "step", "train_loss"), "o-", ms=3, label="train loss (epoch)")
    ax_loss.plot(*_series(epochs, "step", "val_loss"), "s-", ms=3, label="val loss")
    ax_loss.set(xlabel="optimizer step", ylabel="loss", title="loss")

    ax_lr.plot(*_series(steps, "step", "lr"), lw=1.0)
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

    ax_err.plot(*_series(epochs, "epoch", "top1_err"), "o-", ms=3, label="val top-1 err")
    ema_keys = sorted({k for r in epochs for k in r if _EMA_ERR.match(k)})
    for key in ema_keys:
        ax_err.plot(*_series(epochs, "epoch", key), "^-", ms=3, label=key.replace("_", " "))
    ax_err.set(xlabel="epoch", ylabel="top-1 error (%)", title="validation top-1 error")
    ax_err.xaxis.set_major_locator(MaxNLocator(integer=True))

    for ax in (ax_loss, ax_err):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in (ax_loss, ax_lr, ax_err):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(out, dpi=110)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding metrics.jsonl")
    p.add_argument("--out", metavar="PNG", help="output image (default: RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    path = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        print(f"error: {path} not found; pass a run directory written by main.py.", file=sys.stderr)
        return 2
    steps, epochs, bad = read_metrics(path)
    if bad:
        print(f"note: skipped {bad} unreadable line(s) in {path} (e.g. cut short by a kill).", file=sys.stderr)
    if not steps and not epochs:
        print(f"error: {path} holds no step or epoch records yet.", file=sys.stderr)
        return 2
    out = args.out or os.path.join(args.run_dir, "curves.png")
    plot_curves(steps, epochs, out, title=os.path.normpath(args.run_dir))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
