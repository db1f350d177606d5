import json
import sys

import pytest

import models
from configs.published import published_rows
from models.flops import count_flops
from models.swinv2 import SWINV2_ZOO

# the official release's table (configs/published.csv): GFLOPs of every registered variant
PAPER_GFLOPS = {r.model: r.gflops for r in published_rows("release") if r.model in models.ZOO}


@pytest.mark.parametrize("name", models.list_models())
def test_exact_parameter_count_and_paper_gflops(name):
    """Counted once per variant by scripts/model_table.py's zoo_row (on the meta device: shapes only), which the
    script's own test then reuses."""
    from scripts.model_table import zoo_row

    assert set(PAPER_GFLOPS) == set(models.list_models())
    row = zoo_row(name)
    assert row["params"] == models.ZOO[name].params and row["img_size"] == models.ZOO[name].img_size
    assert row["gflops"] == PAPER_GFLOPS[name]


def test_counting_flops_leaves_the_attention_kernel_as_it_was():
    model = models.SwinTransformer(img_size=32, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, num_classes=5,
                                   attn_impl="sdpa")
    count_flops(model, 32)
    assert all(m.attn_impl == "sdpa" for m in model.modules() if hasattr(m, "attn_impl"))


def test_flops_count_attention_products_and_real_tensors():
    model = models.SwinTransformer(img_size=32, embed_dim=8, depths=(2,), num_heads=(2,), window_size=4, num_classes=5)
    flops = count_flops(model, 32)
    tokens, c, n = 64, 8, 16
    expected = (
        tokens * c * 3 * 16  # patch embedding conv
        + 2 * (tokens * c * 3 * c + 2 * tokens * n * c + tokens * c * c + 2 * tokens * c * 4 * c)  # 2 blocks
        + c * 5  # head
    )
    assert flops == expected


def test_model_table_script_prints_markdown_and_json(capsys, monkeypatch):
    from scripts import model_table

    monkeypatch.setattr(sys, "argv", ["model_table.py", "--json"])
    model_table.main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| model | image size | params | GFLOPs |")
    tables = json.loads(lines[-1])
    assert len(tables["comparison"]) == 18 and len(tables["ablation"]) == 7
    assert all(r["agrees"] or r["note"] for r in tables["comparison"] + tables["ablation"])
    pvt_s = next(r for r in tables["comparison"] if r["row"] == "PVT-S")
    assert (pvt_s["params"], pvt_s["params_published_m"], pvt_s["gflops_published"]) == (24_485_864, 24.5, 3.8)
    rows = tables["zoo"]
    assert [r["name"] for r in rows] == models.list_models() + list(SWINV2_ZOO)
    assert {r["name"]: r["gflops"] for r in rows[:len(PAPER_GFLOPS)]} == PAPER_GFLOPS
    assert rows[0] == {"name": "swin_tiny_patch4_window7_224", "img_size": 224, "params": 28288354, "gflops": 4.5}
