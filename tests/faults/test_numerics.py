"""Non-finite numbers in a tiny real run (engine.run in this process): NaN losses skip exactly their updates,
which are counted and logged; TRAIN.MAX_BAD_STEPS consecutive ones stop the run with a clear message; weights
that overflow to Inf are never written to a checkpoint."""
from __future__ import annotations

import importlib
import json
import logging
import os

import pytest
import torch

import engine
from configs import get_config
from tests.helpers.processes import RUN_OPTS, run_dir

RUN_MODULE = importlib.import_module("engine.run")  # `engine.run` the attribute is the function
# One epoch of 16 updates without accumulation: micro-batch i (0-based) is update i.
OPTS = ["DATA.SYNTHETIC_TRAIN_SIZE", "64", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
        "TRAIN.ACCUMULATION_STEPS", "1"]


def _nan_loss_on(monkeypatch, bad_calls) -> None:
    """Make the training loss NaN on the given (0-based) calls, as a bad batch or an overflow would."""
    build = RUN_MODULE.build_criterion

    def build_with_nans(cfg, mixup):
        criterion, calls = build(cfg, mixup), []

        def loss(outputs, targets):
            calls.append(1)
            value = criterion(outputs, targets)
            return value * float("nan") if len(calls) - 1 in bad_calls else value

        return loss

    monkeypatch.setattr(RUN_MODULE, "build_criterion", build_with_nans)


def _run(tmp_path, *opts: str) -> int:
    return engine.run(get_config(None, RUN_OPTS + OPTS + ["OUTPUT", str(tmp_path), *opts]))


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_nan_losses_skip_exactly_their_updates(tmp_path, monkeypatch, caplog):
    _nan_loss_on(monkeypatch, {3, 7, 8})
    with caplog.at_level(logging.INFO):
        assert _run(tmp_path) == 0
    d = run_dir(str(tmp_path))
    with open(os.path.join(d, "metrics.jsonl")) as f:
        epoch = [r for r in map(json.loads, f) if r["kind"] == "epoch"][0]
    assert epoch["skipped"] == 3
    assert "EPOCH 0 training takes" in caplog.text and "(16 updates, 3 skipped)" in caplog.text
    ckpt = torch.load(os.path.join(d, "ckpt_epoch_0.pth"), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 16
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {13}, "AdamW must not count (or apply) the skipped updates"
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_max_bad_steps_consecutive_non_finite_updates_stop_the_run(tmp_path, monkeypatch, caplog):
    _nan_loss_on(monkeypatch, set(range(2, 100)))
    assert _run(tmp_path, "TRAIN.MAX_BAD_STEPS", "3") == 1
    errors = _errors(caplog)
    assert len(errors) == 1 and errors[0].startswith(
        "3 consecutive updates had a non-finite loss or gradient norm (epoch 0, update 5;"), errors
    assert "reaching TRAIN.MAX_BAD_STEPS 3" in errors[0]
    assert not [n for n in os.listdir(run_dir(str(tmp_path))) if n.endswith(".pth")]


@pytest.mark.parametrize("ema", ["False", "True"])
def test_weights_that_overflow_are_never_saved(tmp_path, caplog, ema):
    # A learning rate beyond float32 (1e41 * 4 / 512 = 7.8e38 after linear scaling) overflows the weights to Inf at
    # the first update; the bad-step limit is off, so the run reaches the end of the epoch and tries to save.
    assert _run(tmp_path, "TRAIN.BASE_LR", "1e41", "TRAIN.MAX_BAD_STEPS", "0",
                "MODEL_EMA.ENABLE", ema) == 1
    errors = _errors(caplog)
    path = os.path.join(run_dir(str(tmp_path)), "ckpt_epoch_0.pth")
    assert len(errors) == 1 and errors[0].startswith(f"Refusing to write checkpoint {path}: tensor "), errors
    assert "holds NaN or Inf values" in errors[0]
    assert not [n for n in os.listdir(run_dir(str(tmp_path))) if "ckpt" in n]
