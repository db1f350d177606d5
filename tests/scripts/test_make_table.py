"""scripts/make_table.py: eval.json files -> the paper's table with published values and differences."""
import csv
import io
import json

import pytest

from configs.published import published_rows
from scripts import make_table


def _record(model, img_size, params, gflops, top1_acc, **extra):
    return {"model": model, "img_size": img_size, "params": params, "gflops": gflops, "top1_acc": top1_acc,
            "top1_err": 100.0 - top1_acc, "top5_acc": 95.0, "top5_err": 5.0, "loss": 0.9, "num_images": 50000,
            "checkpoint": "ckpt.pth", "pretrained": "", "ema": False, "dataset": "imagenet", **extra}


@pytest.fixture
def runs(tmp_path):
    records = {
        "tiny": _record("swin_tiny_patch4_window7_224", 224, 28_288_354, 4.494, 81.17),
        "b384_22k": _record("swin_base_patch4_window12_384_22kto1k_finetune", 384, 87_903_584, 47.105, 86.44,
                            ema=True),
        "mine": _record("my_net", 160, 1_000_000, None, 50.0),
    }
    for name, rec in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval.json").write_text(json.dumps(rec))
    return tmp_path


def _run(capsys, *args):
    assert make_table.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


def test_markdown_against_the_paper(runs, capsys):
    out = _run(capsys, runs / "tiny", runs / "b384_22k", runs / "mine")
    lines = out.strip().splitlines()
    assert lines[0] == ("| Method | Image size | Param (M) | published | Δ | GFLOPs | published | Δ | "
                        "Top-1 err (%) | published | Δ | Run |")
    assert lines[2] == (f"| Swin-T | 224 | 28.3 | 29.0 | -0.7 | 4.49 | 4.5 | -0.01 | 18.83 | 18.7 | +0.13 "
                        f"| {runs / 'tiny'} |")
    assert lines[3] == (f"| Swin-B (22K) (EMA) | 384 | 87.9 | 88.0 | -0.1 | 47.10 | 47.0 | +0.10 | 13.56 | 14.0 "
                        f"| -0.44 | {runs / 'b384_22k'} |")
    assert lines[4] == f"| my_net | 160 | 1.0 | — | — | — | — | — | 50.00 | — | — | {runs / 'mine'} |"
    assert len(lines) == 5


def test_models_under_a_million_parameters_keep_two_significant_digits(tmp_path, capsys):
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "eval.json").write_text(json.dumps(_record("swin_fmnist", 28, 568_102, 0.022, 90.0)))
    line = _run(capsys, tmp_path / "small").strip().splitlines()[2]
    assert line.startswith("| swin_fmnist | 28 | 0.57 | — |"), line


def test_csv_against_the_release_with_directory_search(runs, capsys):
    rows = list(csv.DictReader(io.StringIO(_run(capsys, runs, "--csv", "--ref", "release"))))
    assert [r["method"] for r in rows] == ["Swin-B (22K) (EMA)", "my_net", "Swin-T"]  # sorted run paths
    tiny = rows[2]
    assert (tiny["params_m"], tiny["params_m_published"], tiny["params_m_diff"]) == ("28.3", "28.0", "+0.3")
    assert (tiny["top1_err"], tiny["top1_err_published"], tiny["top1_err_diff"]) == ("18.83", "18.8", "+0.03")
    assert rows[0]["top1_err_published"] == "13.6" and rows[0]["gflops_published"] == "47.1"
    assert rows[1]["top1_err_published"] == "" and rows[1]["gflops"] == ""


def test_pretrain_detection_and_override(tmp_path):
    rec = _record("swin_base_patch4_window7_224", 224, 87_768_224, 15.44, 85.0,
                  checkpoint="/w/swin_base_patch4_window7_224_22kto1k.pth")
    assert make_table.pretrain_of(rec) == "22K"
    assert make_table.published_for(rec, "paper", "auto").top1_err == pytest.approx(14.8)  # release: 85.2
    assert make_table.published_for(rec, "paper", "1K").top1_err == 16.7
    assert make_table.published_for({**rec, "img_size": 256}, "paper", "auto") is None
    assert make_table.published_for({**rec, "dataset": "fashion_mnist"}, "paper", "auto") is None
    assert make_table.canonical_name("swin_large_patch4_window12_384.ms_in22k_ft_in1k") == (
        "swin_large_patch4_window12_384")


def test_every_release_model_has_a_published_row():
    release = [r for r in published_rows("release") if not r.model.startswith("swinv2")]
    assert len(release) == 10 and len(published_rows("release")) == 20
    for row in release:
        assert row.model.endswith(str(row.img_size)) and row.pretrain in ("1K", "22K")
    large = [r for r in release if r.model == "swin_large_patch4_window12_384"]
    assert [r.top1_err for r in large] == [pytest.approx(12.7)]


def test_tables_print_every_row_measured_where_a_run_exists(runs, tmp_path, capsys):
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "eval.json").write_text(json.dumps(
        _record("swin_tiny_ablation_no_shift", 224, 28_288_354, 4.494, 80.05)))
    out = _run(capsys, "--tables", runs / "tiny", runs / "mine", tmp_path / "abl")
    comparison, ablation = out.split("Ablation (paper Table 4)")
    assert comparison.count("\n| ") == 1 + 18  # header + every row of the comparison table
    assert "| ResNet50 | 224 | — | 25.6 | — | — | 4.1 | — | — | 21.5 | — | — |" in comparison
    assert f"| Swin-T | 224 | 28.3 | 29.0 | -0.7 | 4.49 | 4.5 | -0.01 | 18.83 | 18.7 | +0.13 | {runs / 'tiny'} |" in comparison
    assert "my_net" not in out  # a run of no row is not in the paper's tables
    assert ablation.count("\n| ") == 1 + 7
    assert f"| w/o shifting | 80.05 | 80.2 | -0.15 | {tmp_path / 'abl'} |" in ablation
    assert "| no pos. | — | 80.1 | — | — |" in ablation
    assert f"| shifted windows | 81.17 | 81.3 | -0.13 | {runs / 'tiny'} |" in ablation  # the Swin-T run


def test_errors_name_the_path(tmp_path, capsys):
    assert make_table.main([str(tmp_path / "missing")]) == 2
    assert "missing is neither" in capsys.readouterr().err
    assert make_table.main([str(tmp_path)]) == 2
    assert f"No eval.json under {tmp_path}" in capsys.readouterr().err
    (tmp_path / "eval.json").write_text("{not json")
    assert make_table.main([str(tmp_path)]) == 2
    assert "eval.json is not valid JSON" in capsys.readouterr().err
