"""Print parameters and GFLOPs of every registered Swin variant and of every row of the paper's tables.

Three Markdown tables: the Swin zoo (models.ZOO and the SwinV2 models of models/swinv2.py), the comparison table (18 rows: Swin and its baselines) and the
ablation table (Table 4, Swin-T variants). For the paper's rows each model is built from the config that
reproduces the row (configs/published.csv names it) and its measured numbers stand beside the printed ones, with
"ok" where they agree within the tolerance of configs/published.py and the row's note where they do not.
Models are built on the meta device, so the whole table costs no memory and a few seconds.
`--json` also prints {"zoo": [...], "comparison": [...], "ablation": [...]} as the last line.
"""
import argparse
import functools
import json
import logging
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from configs import get_config  # noqa: E402
from configs.published import Row, published_rows  # noqa: E402
from models import ZOO, build_model, create_model  # noqa: E402
from models.flops import count_flops, count_params  # noqa: E402
from models.swinv2 import SWINV2_ZOO, create_swinv2  # noqa: E402

log = logging.getLogger(__name__)


def model_rows() -> List[Dict[str, object]]:
    """One row per registered Swin variant (v1, then the official SwinV2 models) with its exact parameter count and
    GFLOPs (multiply-adds / 1e9)."""
    return [dict(zoo_row(name)) for name in list(ZOO) + list(SWINV2_ZOO)]


@functools.lru_cache(maxsize=None)
def zoo_row(name: str) -> Dict[str, object]:
    """The model_rows() row of one registered variant (computed once per process; copy before changing it)."""
    table, create = (ZOO, create_model) if name in ZOO else (SWINV2_ZOO, create_swinv2)
    with torch.device("meta"):
        model = create(name)
    return {"name": name, "img_size": table[name].img_size, "params": count_params(model),
            "gflops": round(count_flops(model, table[name].img_size) / 1e9, 1)}


@functools.lru_cache(maxsize=None)
def measure(row: Row) -> Dict[str, object]:
    """A published row with the parameters and GFLOPs of the model its config builds (computed once per row)."""
    cfg = get_config(row.config_path)
    with torch.device("meta"):
        model = build_model(cfg)
    params, gflops = count_params(model), count_flops(model, cfg.DATA.IMG_SIZE) / 1e9
    return {
        "row": row.row, "config": row.config, "model": cfg.MODEL.NAME, "img_size": cfg.DATA.IMG_SIZE,
        "params": params, "params_published_m": row.params_m, "gflops": round(gflops, 2),
        "gflops_published": row.gflops, "top1_err_published": row.top1_err,
        "agrees": row.params_agree(params) and row.gflops_agree(gflops), "note": row.note,
    }


def _published(value: object) -> str:
    return "—" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print every table as one JSON line at the end")
    args = parser.parse_args()
    zoo = model_rows()
    print("| model | image size | params | GFLOPs |")
    print("|---|---|---|---|")
    for r in zoo:
        print(f"| {r['name']} | {r['img_size']} | {r['params']:,} ({r['params'] / 1e6:.1f}M) | {r['gflops']:.1f} |")
    tables = {"zoo": zoo}
    for table in ("comparison", "ablation"):
        rows = [measure(r) for r in published_rows(table)]
        tables[table] = rows
        print(f"\n{table} table\n")
        print("| row | config | image size | params (M) | published | GFLOPs | published | top-1 err published | |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            verdict = "ok" if r["agrees"] else f"differs: {r['note'] or 'NO NOTE'}"
            print(f"| {r['row']} | {r['config']} | {r['img_size']} | {r['params'] / 1e6:.2f} | "
                  f"{_published(r['params_published_m'])} | {r['gflops']:.2f} | {_published(r['gflops_published'])} | "
                  f"{r['top1_err_published']} | {verdict} |")
    if args.json:
        print(json.dumps(tables))


if __name__ == "__main__":
    main()
