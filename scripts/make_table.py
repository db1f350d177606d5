"""Collect eval.json files into the paper's table: Method | Image size | Param (M) | GFLOPs | Top-1 err.

Each measured number stands beside the published one and the difference (measured - published):

    python scripts/make_table.py output/swin_tiny_patch4_window7_224/default output/...   # Markdown
    python scripts/make_table.py output --csv > table.csv        # every eval.json below output/, as CSV

By default the published value is the paper's comparison table where it lists the model and the official
release's table otherwise (`--ref release` always uses the release's). Whether a model was pre-trained on
ImageNet-22K is read from its name, pretrained weights or checkpoint ("22k" in any of them) unless
`--pretrain` says so. Models without a published value show "—".

    python scripts/make_table.py --tables [output]   # the paper's comparison and ablation tables, every row

`--tables` prints every row of both tables in the paper's order (configs/published.csv): one line per run of the
row among the given runs, or the published values with "—" where no run is given.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from typing import Any, Iterable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from configs.published import Row, published_rows  # noqa: E402

COLUMNS = ["Method", "Image size", "Param (M)", "published", "Δ", "GFLOPs", "published", "Δ",
           "Top-1 err (%)", "published", "Δ", "Run"]
ABLATION_COLUMNS = ["Ablation (Swin-T)", "Top-1 (%)", "published", "Δ", "Run"]


def canonical_name(model: str) -> str:
    """Official variant name of a run's MODEL.NAME (drops timm tags and fine-tune/22k suffixes)."""
    base = model.split(".")[0]
    m = re.match(r"swin_(tiny|small|base|large)_patch4_window\d+_\d+", base)
    return m.group(0) if m else base


def pretrain_of(record: dict) -> str:
    """"22K" when the model name, pretrained weights or checkpoint mention 22k, else "1K"."""
    text = " ".join(str(record.get(k) or "") for k in ("model", "pretrained", "checkpoint")).lower()
    return "22K" if "22k" in text else "1K"


def _matches(row: Row, record: dict, pretrain: str) -> bool:
    """Whether an eval.json record is a run of this published row (ImageNet-1K validation, same model and size)."""
    return (record.get("dataset", "imagenet") == "imagenet" and canonical_name(record["model"]) == row.model
            and (pretrain_of(record) if pretrain == "auto" else pretrain) == row.pretrain
            and record.get("img_size") == row.img_size)


def published_for(record: dict, ref: str, pretrain: str) -> Row | None:
    """The published row this record is compared with (the paper's comparison table, else the release's; only
    the release's with ref "release"), or None."""
    tables = ("comparison", "release") if ref == "paper" else ("release",)
    for table in tables:
        for row in published_rows(table):
            if _matches(row, record, pretrain):
                return row
    return None

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


def row_for(record: dict, run: str, ref: str = "paper", pretrain: str = "auto",
            pub: Row | None = None) -> list[str]:
    """One table row: measured value, published value and difference for params, GFLOPs, top-1 err."""
    pub = pub or published_for(record, ref, pretrain)
    params_m = record["params"] / 1e6 if record.get("params") is not None else None
    gflops, err = record.get("gflops"), record["top1_err"]
    method = pub.row if pub else record["model"]
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


def paper_tables(records: list[tuple[dict, str]], pretrain: str = "auto") -> tuple[list[list[str]], list[list[str]]]:
    """The comparison and ablation tables with every published row: one line per run of the row among
    `records` ((eval.json record, run directory) pairs), or one line of published values and "—" where none ran."""
    comparison, ablation = [], []
    for row in published_rows("comparison"):
        runs = [(rec, run) for rec, run in records if _matches(row, rec, pretrain)]
        comparison += [row_for(rec, run, pub=row) for rec, run in runs] or [[
            row.row, str(row.img_size), "—", _num(row.params_m, 1), "—", "—", _num(row.gflops, 1), "—",
            "—", _num(row.top1_err, 1), "—", "—"]]
    for row in published_rows("ablation"):
        runs = [(rec, run) for rec, run in records if _matches(row, rec, pretrain)]
        published_acc = 100.0 - row.top1_err
        ablation += [[row.row, _num(rec["top1_acc"], 2), _num(published_acc, 1),
                      _diff(rec["top1_acc"], published_acc, 2), run] for rec, run in runs] or [[
            row.row, "—", _num(published_acc, 1), "—", "—"]]
    return comparison, ablation


def to_markdown(rows: list[list[str]], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[list[str]], out: Any) -> None:
    header = ["method", "img_size", "params_m", "params_m_published", "params_m_diff", "gflops", "gflops_published",
              "gflops_diff", "top1_err", "top1_err_published", "top1_err_diff", "run"]
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows([["" if c == "—" else c for c in r] for r in rows])


def _read_records(paths: list[str]) -> list[tuple[dict, str]]:
    """(eval.json record, run directory) for every eval.json the paths name or hold."""
    records = []
    for path in find_eval_files(paths):
        with open(path, encoding="utf-8") as f:
            try:
                record = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON ({e}); re-run the evaluation.") from None
        for field in ("model", "img_size", "top1_err", "top1_acc"):
            if field not in record:
                raise ValueError(f"{path} lacks the field {field!r}; it is not an eval.json of this project.")
        records.append((record, os.path.dirname(path) or "."))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="run directories, eval.json files or output roots")
    p.add_argument("--csv", action="store_true", help="print CSV instead of Markdown")
    p.add_argument("--ref", choices=["paper", "release"], default="paper",
                   help="published values: the paper's table (release where it has none) or the release's")
    p.add_argument("--pretrain", choices=["auto", "1K", "22K"], default="auto",
                   help="pre-training data of every run (auto: from names)")
    p.add_argument("--tables", action="store_true",
                   help="the paper's comparison and ablation tables with every row, measured where a run is given")
    args = p.parse_args(argv)
    if not args.runs and not args.tables:
        p.error("give run directories or eval.json files, or --tables")
    try:
        records = _read_records(args.runs) if args.runs else []
        if not args.tables:
            rows = [row_for(rec, run, args.ref, args.pretrain) for rec, run in records]
            write_csv(rows, sys.stdout) if args.csv else sys.stdout.write(to_markdown(rows))
            return 0
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    comparison, ablation = paper_tables(records, args.pretrain)
    if args.csv:
        write_csv(comparison, sys.stdout)
        csv.writer(sys.stdout, lineterminator="\n").writerows(
            [["ablation", "top1_acc", "top1_acc_published", "top1_acc_diff", "run"]]
            + [["" if c == "—" else c for c in r] for r in ablation])
    else:
        sys.stdout.write("Comparison (ImageNet-1K)\n\n" + to_markdown(comparison))
        sys.stdout.write("\nAblation (paper Table 4)\n\n" + to_markdown(ablation, ABLATION_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
