"""Print a Markdown table of every registered Swin variant: name, image size, parameters, GFLOPs.

Counts come from models built on the meta device, so the table costs no memory or compute.
`--json` also prints one JSON list of {"name", "img_size", "params", "gflops"} as the last line.
"""
import argparse
import json
import logging
import os
import sys
from typing import Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from models import ZOO, create_model  # noqa: E402
from models.flops import count_flops, count_params  # noqa: E402

log = logging.getLogger(__name__)


def model_rows() -> List[Dict[str, object]]:
    """One row per registered model with its exact parameter count and GFLOPs (multiply-adds / 1e9)."""
    rows = []
    for name, variant in ZOO.items():
        with torch.device("meta"):
            model = create_model(name)
        rows.append({"name": name, "img_size": variant.img_size, "params": count_params(model),
                     "gflops": round(count_flops(model, variant.img_size) / 1e9, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line at the end")
    args = parser.parse_args()
    rows = model_rows()
    print("| model | image size | params | GFLOPs |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['img_size']} | {r['params']:,} ({r['params'] / 1e6:.1f}M) | {r['gflops']:.1f} |")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
