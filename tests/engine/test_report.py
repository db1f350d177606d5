"""engine/report.py: the eval.json record and report.md."""
import json
import logging
import os
import subprocess

import pytest
import torch
from torch import nn

import models
from models.flops import count_flops
from configs import get_config
from engine import report
from engine.evaluate import EvalResult

TINY = ["MODEL.NAME", "swin_micro", "MODEL.NUM_CLASSES", "3", "DATA.IMG_SIZE", "32", "MODEL.SWIN.EMBED_DIM", "8",
        "MODEL.SWIN.DEPTHS", "[1, 1]", "MODEL.SWIN.NUM_HEADS", "[1, 2]", "MODEL.SWIN.WINDOW_SIZE", "4",
        "MODEL.DROP_PATH_RATE", "0.0", "DATA.DATA_PATH", "/data/val19"]


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config(None, TINY)
    torch.manual_seed(0)
    return cfg, models.build_model(cfg)


class _Wrapper(nn.Module):  # stands in for DistributedDataParallel, which needs a process group
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_record_fields(tiny):
    cfg, model = tiny
    result = EvalResult(loss=1.25, correct1=7, correct5=15, num_images=19)
    rec = report.build_eval_record(cfg, _Wrapper(model), result, "/runs/ckpt_epoch_3.pth", True,
                                   extra={"world_size": 2})
    assert rec["model"] == "swin_micro" and rec["img_size"] == 32
    assert rec["params"] == sum(p.numel() for p in model.parameters())
    assert rec["gflops"] == pytest.approx(count_flops(model, 32) / 1e9, rel=1e-5) and rec["gflops"] > 0
    assert rec["top1_acc"] == 100 * 7 / 19 and rec["top1_err"] == 100 - 100 * 7 / 19
    assert rec["top5_acc"] == 100 * 15 / 19 and rec["top5_err"] == 100 - 100 * 15 / 19
    assert (rec["loss"], rec["correct1"], rec["correct5"], rec["num_images"]) == (1.25, 7, 15, 19)
    assert rec["checkpoint"] == "/runs/ckpt_epoch_3.pth" and rec["ema"] is True
    assert (rec["dataset"], rec["data_path"], rec["device"], rec["world_size"]) == ("imagenet", "/data/val19", "cpu", 2)
    assert rec["date"][:4].isdigit() and rec["date"].endswith("+00:00")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(report.__file__))
    assert rec["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    json.dumps(rec)  # every value is plain JSON


def test_plain_dict_result_and_empty_evaluation(tiny):
    cfg, model = tiny
    rec = report.build_eval_record(cfg, model, {"loss": 2.0, "correct1": 19, "correct5": 19, "num_images": 19},
                                   "w.pth", False)
    assert rec["top1_acc"] == 100.0 and rec["top1_err"] == 0.0 and rec["ema"] is False
    with pytest.raises(ValueError, match="num_images is 0"):
        report.build_eval_record(cfg, model, {"loss": 0.0, "correct1": 0, "correct5": 0, "num_images": 0},
                                 "w.pth", False)


def test_unwrap_ddp_and_compile(tiny):
    _, model = tiny
    assert report._unwrap(_Wrapper(torch.compile(model))) is model


def test_gflops_none_when_counting_fails(tiny, monkeypatch, caplog):
    cfg, model = tiny

    def broken(model, img_size):
        raise RuntimeError("no counter for this op")

    monkeypatch.setattr(report, "count_flops", broken)
    with caplog.at_level(logging.WARNING, logger="engine.report"):
        rec = report.build_eval_record(cfg, model, EvalResult(1.0, 1, 2, 3), "w.pth", False)
    assert rec["gflops"] is None
    assert "no counter for this op" in caplog.text
    assert "| GFLOPs | — |" in report.render_report(rec)


def test_git_commit_unknown_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(report.subprocess, "run", no_git)
    assert report.git_commit() == "unknown"


def test_write_eval_report(tmp_path, tiny):
    cfg, model = tiny
    rec = report.build_eval_record(cfg, model, EvalResult(0.5, 7, 15, 19), "/r/ckpt_epoch_3.pth", True)
    run_dir = tmp_path / "run"
    report.write_eval_report(str(run_dir), rec)
    assert sorted(os.listdir(run_dir)) == ["eval.json", "report.md"]
    assert json.loads((run_dir / "eval.json").read_text()) == rec
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# swin_micro on imagenet\n")
    for line in ("| Images | 19 (/data/val19) |", "| Top-1 accuracy / error | 36.842 % / 63.158 % |",
                 "| Top-5 accuracy / error | 78.947 % / 21.053 % |",
                 "| Checkpoint | `/r/ckpt_epoch_3.pth` (EMA weights) |",
                 f"| Params | {rec['params'] / 1e6:.2f} M ({rec['params']:,}) |", f"| GFLOPs | {rec['gflops']:.2f} |"):
        assert line in md
