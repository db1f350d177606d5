"""The published numbers of the paper's tables and the official release (configs/published.csv), read once.

Each row names the config that reproduces it, so scripts/model_table.py, scripts/make_table.py and the tests read
one table instead of repeating numbers.
"""
import csv
import functools
import os
from dataclasses import dataclass
from typing import List, Optional

CSV_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.csv")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = ("comparison", "ablation", "release")
PARAMS_TOL = 0.005  # relative: timm's resnet101 is 0.3% under the printed 44.7M
GFLOPS_TOL = 0.05  # relative: FLOP conventions differ in what they count besides matmuls and convolutions


@dataclass(frozen=True)
class Row:
    """One published row. params_m / gflops are None where the table prints none (the ablation table)."""

    table: str  # comparison | ablation | release
    row: str  # the row's label in the table ("ResNet50", "w/o shifting", "Swin-B (22K)")
    config: str  # path of the config that reproduces it, relative to the repository root
    model: str  # MODEL.NAME of its runs, without fine-tune / 22k suffixes
    pretrain: str  # 1K | 22K
    img_size: int
    params_m: Optional[float]
    gflops: Optional[float]
    top1_err: Optional[float]  # None where the table prints none
    note: str  # why measured and printed numbers differ beyond the tolerance, where they do
    params_digits: int = 1  # decimals the table prints
    gflops_digits: int = 1

    def params_agree(self, params: int) -> bool:
        """Whether a parameter count agrees with the printed one: within PARAMS_TOL, or equal at the printed
        precision (Swin-S's 49.6M is the "50M" of a table that prints whole millions)."""
        return _agrees(params / 1e6, self.params_m, self.params_digits, PARAMS_TOL)

    def gflops_agree(self, gflops: float) -> bool:
        """Whether GFLOPs (multiply-adds / 1e9, models/flops.py) agree with the printed ones, as params_agree."""
        return _agrees(gflops, self.gflops, self.gflops_digits, GFLOPS_TOL)

    @property
    def config_path(self) -> str:
        return os.path.join(REPO_ROOT, self.config)


def _float(text: str) -> Optional[float]:
    return float(text) if text.strip() else None


def _digits(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _agrees(measured: float, printed: Optional[float], digits: int, rel: float) -> bool:
    if printed is None:
        return True  # nothing printed to disagree with
    return abs(measured - printed) <= rel * printed or round(measured, digits) == printed


@functools.lru_cache(maxsize=None)
def _load() -> tuple:
    with open(CSV_PATH, encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = []
    for i, r in enumerate(csv.DictReader(lines), start=2):
        if r["table"] not in TABLES or r["pretrain"] not in ("1K", "22K"):
            raise ValueError(f"{CSV_PATH}: data row {i} has table {r['table']!r} / pretrain {r['pretrain']!r}; "
                             f"tables are {TABLES}, pre-training 1K or 22K")
        rows.append(Row(r["table"], r["row"], r["config"], r["model"], r["pretrain"], int(r["img_size"]),
                        _float(r["params_m"]), _float(r["gflops"]), _float(r["top1_err"]), r["note"],
                        _digits(r["params_m"]), _digits(r["gflops"])))
    return tuple(rows)


def published_rows(table: Optional[str] = None) -> List[Row]:
    """Every row of `table` (comparison, ablation or release) in the table's order, or of all tables."""
    if table is not None and table not in TABLES:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    return [r for r in _load() if table is None or r.table == table]
