import json
import sys

import pytest
import torch

import models
from models.flops import count_flops, count_params

PAPER_GFLOPS = {
    "swin_tiny_patch4_window7_224": 4.5, "swin_small_patch4_window7_224": 8.7,
    "swin_base_patch4_window7_224": 15.4, "swin_base_patch4_window12_384": 47.1,
    "swin_large_patch4_window7_224": 34.5, "swin_large_patch4_window12_384": 103.9,
}


@pytest.mark.parametrize("name", models.list_models())
def test_exact_parameter_count_and_paper_gflops(name):
    assert set(PAPER_GFLOPS) == set(models.list_models())
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = models.create_model(name, attn_impl="sdpa")
    assert count_params(model) == models.ZOO[name].params
    flops = count_flops(model, models.ZOO[name].img_size)
    assert round(flops / 1e9, 1) == PAPER_GFLOPS[name]
    assert all(m.attn_impl == "sdpa" for m in model.modules() if hasattr(m, "attn_impl"))  # restored


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
    rows = json.loads(lines[-1])
    assert [r["name"] for r in rows] == models.list_models()
    assert {r["name"]: r["gflops"] for r in rows} == PAPER_GFLOPS
    assert rows[0] == {"name": "swin_tiny_patch4_window7_224", "img_size": 224, "params": 28288354, "gflops": 4.5}
