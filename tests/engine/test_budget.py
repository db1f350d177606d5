"""TRAIN.TIME_BUDGET: the run's length fitted after the first epoch, kept across resumes."""
from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

import engine
from configs import ConfigError, derive, get_config
from engine.optim import build_schedule, evaluations, updates_within_budget
from tests.helpers.engine import SHORT_RUN, TINY_SWIN
from tests.helpers.processes import records

# 32 images, batch 8: 4 updates per epoch; at most 5 epochs, 1 of warmup
OPTS = TINY_SWIN + SHORT_RUN + ["TRAIN.EPOCHS", "5", "MODEL.DROP_PATH_RATE", "0.1"]


def test_updates_within_budget():
    # 100 s left after the first epoch of 10 updates, 30 s of training and 5 of evaluation an epoch: 2 more whole
    # epochs (70 s), then 8 updates of 3 s and their evaluation (29 s)
    assert updates_within_budget(100, (30, 5), 10, 1, (2, 20)) == 38
    assert updates_within_budget(100, (30, 5), 10, 1, (2, 3)) == 30  # never more than TRAIN.EPOCHS
    assert updates_within_budget(75.5, (30, 5), 10, 1, (2, 20)) == 30  # no time for one more update and its evaluation
    assert updates_within_budget(77.5, (30, 5), 10, 1, (2, 20)) == 30  # nor for a tenth of an epoch
    assert updates_within_budget(78.5, (30, 5), 10, 1, (2, 20)) == 31
    assert updates_within_budget(-50, (30, 5), 10, 1, (2, 20)) == 20  # over budget: warmup plus one epoch of decay
    assert updates_within_budget(-50, (30, 5), 10, 1, (2, 1)) == 10
    assert updates_within_budget(100, (0, 0), 10, 1, (2, 20)) == 200


def test_evaluations_count_every_nth_epoch_and_the_last():
    def brute(first, count, every):
        last = first + count - 1
        return sum(1 for e in range(first, first + count) if e == last or (every > 0 and (e + 1) % every == 0))

    for first in range(0, 7):
        for count in range(0, 9):
            for every in range(0, 5):
                assert evaluations(first, count, every) == brute(first, count, every), (first, count, every)


def test_the_plan_counts_only_the_evaluations_that_run():
    # EVAL_FREQ 1 is the plan above; 0: one evaluation at the end, whatever the length
    assert updates_within_budget(100, (30, 5), 10, 1, (2, 20), 1) == 38
    assert updates_within_budget(100, (30, 5), 10, 1, (2, 20), 0) == 41  # 95 s for 30 updates + 1 evaluation
    assert updates_within_budget(95, (30, 5), 10, 1, (2, 20), 0) == 40
    assert updates_within_budget(94.5, (30, 5), 10, 1, (2, 20), 0) == 39  # 3 epochs with it don't fit, 9 updates do
    # 2: epochs 1 (1 + 1 = 2 evaluates) and 3 of the next three: 3 x 30 + 2 x 5 = 100
    assert updates_within_budget(100, (30, 5), 10, 1, (2, 20), 2) == 40
    assert updates_within_budget(99, (30, 5), 10, 1, (2, 20), 2) == 39  # 2 epochs + 9 updates + 2 evaluations


def test_eval_freq_rejects_negative():
    with pytest.raises(ConfigError, match="EVAL_FREQ must be >= 0"):
        get_config(None, ["EVAL_FREQ", "-1"])


@pytest.mark.parametrize("every, evaluated", [("0", [3]), ("2", [1, 3])])
def test_eval_freq_evaluates_every_nth_epoch_and_the_last(tmp_path, every, evaluated):
    run_dir = _run(tmp_path, "EVAL_FREQ", every, "TRAIN.EPOCHS", "4")
    epochs = records(run_dir, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert [r["epoch"] for r in epochs if "top1_acc" in r] == evaluated
    assert all(("max_accuracy" in r) == ("top1_acc" in r) for r in epochs)
    with open(os.path.join(run_dir, "eval.json")) as f:
        report = json.load(f)
    assert report["top1_acc"] == epochs[-1]["top1_acc"]
    assert report["max_accuracy"] == max(r["top1_acc"] for r in epochs if "top1_acc" in r)


def test_under_a_budget_the_first_epoch_evaluates_even_with_eval_freq_0(tmp_path):
    run_dir = _run(tmp_path, "EVAL_FREQ", "0", "TRAIN.TIME_BUDGET", "1000", "TRAIN.EPOCHS", "3")
    epochs = records(run_dir, "epoch")
    assert [r["epoch"] for r in epochs if "top1_acc" in r] == [0, 2]
    assert epochs[0]["planned_epochs"] == 3


def test_budget_rejects_negative_minutes():
    with pytest.raises(ConfigError, match="minutes and must be >= 0"):
        get_config(None, ["TRAIN.TIME_BUDGET", "-1"])


@pytest.mark.parametrize("warmup", ["0", "0.25", "1", "2"])
def test_under_a_budget_the_first_epoch_rates_do_not_depend_on_the_length(warmup):
    updates = 8
    cfg = get_config(None, ["TRAIN.TIME_BUDGET", "10", "TRAIN.WARMUP_EPOCHS", warmup, "TRAIN.EPOCHS", "20"])
    derived = derive(cfg)
    lengths = [build_schedule(cfg, derived, updates, epochs) for epochs in (4, 7, 20)]
    for step in range(updates):
        assert len({schedule.lr_at(step) for schedule in lengths}) == 1, step
    short = lengths[0]
    decay_from = max(int(float(warmup) * updates), updates)
    assert short.lr_at(decay_from) == derived.base_lr  # the decay starts after the first epoch (or the warmup)
    assert short.lr_at(decay_from + 1) < derived.base_lr
    last, length = 4 * updates - 1, 4 * updates - decay_from
    assert short.lr_at(last) == pytest.approx(
        derived.min_lr + 0.5 * (derived.base_lr - derived.min_lr) * (1 + math.cos(math.pi * (last - decay_from) / length)))
    if float(warmup) < 1:  # the peak holds from the end of the warmup to the end of the first epoch
        assert [short.lr_at(s) for s in range(int(float(warmup) * updates), updates)] == \
            [derived.base_lr] * (updates - int(float(warmup) * updates))
    # without a budget the same warmup decays right after it
    free = get_config(None, ["TRAIN.WARMUP_EPOCHS", warmup, "TRAIN.EPOCHS", "4"])
    if float(warmup) < 1:
        assert build_schedule(free, derive(free), updates).lr_at(updates - 1) < derived.base_lr


def _run(tmp_path, *opts: str) -> str:
    cfg = get_config(None, OPTS + ["OUTPUT", str(tmp_path)] + list(opts))
    assert engine.run(cfg) == 0
    return os.path.join(str(tmp_path), cfg.MODEL.NAME, cfg.TAG)


def test_a_spent_budget_ends_after_warmup_plus_one_epoch_and_resumes_with_that_length(tmp_path):
    run_dir = _run(tmp_path, "TRAIN.TIME_BUDGET", "1e-6")
    epochs = records(run_dir, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1] and epochs[0]["planned_epochs"] == 2
    assert epochs[0]["planned_updates"] == 8
    with open(os.path.join(run_dir, "eval.json")) as f:
        assert json.load(f)["epochs"] == 2
    final = torch.load(os.path.join(run_dir, "ckpt_epoch_1.pth"), weights_only=True, map_location="cpu")
    assert final["planned_updates"] == 8
    # the decay ran over the 2 planned epochs, not over TRAIN.EPOCHS
    cfg = get_config(None, OPTS)
    planned, full = build_schedule(cfg, derive(cfg), 4, 2), build_schedule(cfg, derive(cfg), 4)
    last = records(run_dir, "step")[-1]  # logged after update 7, the run's last
    assert last["step"] == 8 and last["lr"] == pytest.approx(planned.lr_at(7), rel=1e-6) != full.lr_at(7)

    # resumed after epoch 0 with a budget that would now allow every epoch: the saved length stands, and the
    # weights end bitwise equal; the epoch-0 checkpoint is rewritten as before lengths were counted in updates
    os.remove(os.path.join(run_dir, "ckpt_epoch_1.pth"))
    first_path = os.path.join(run_dir, "ckpt_epoch_0.pth")
    first = torch.load(first_path, weights_only=True, map_location="cpu")
    first["planned_epochs"] = first.pop("planned_updates") // 4
    torch.save(first, first_path)
    shutil.move(os.path.join(run_dir, "eval.json"), str(tmp_path / "first_eval.json"))
    _run(tmp_path, "TRAIN.TIME_BUDGET", "1000")
    again = torch.load(os.path.join(run_dir, "ckpt_epoch_1.pth"), weights_only=True, map_location="cpu")
    assert not os.path.exists(os.path.join(run_dir, "ckpt_epoch_2.pth"))
    for k, v in final["model"].items():
        assert torch.equal(again["model"][k], v), k


def test_an_ample_budget_trains_every_epoch(tmp_path):
    run_dir = _run(tmp_path, "TRAIN.TIME_BUDGET", "1000", "TRAIN.EPOCHS", "3")
    assert [r["epoch"] for r in records(run_dir, "epoch")] == [0, 1, 2]
    assert records(run_dir, "epoch")[0]["planned_epochs"] == 3


def test_a_budget_can_end_part_way_through_an_epoch_and_resume_there(tmp_path, monkeypatch):
    """The planned length is counted in updates: the last epoch stops after the updates that fit, the decay ends
    there, and a resumed run keeps that length and ends with the same weights."""
    import importlib

    run_module = importlib.import_module("engine.run")
    monkeypatch.setattr(run_module, "updates_within_budget", lambda *args: 10)  # 2.5 epochs of 4 updates
    run_dir = _run(tmp_path, "TRAIN.TIME_BUDGET", "1000")
    epochs = records(run_dir, "epoch")
    assert [r["epoch"] for r in epochs] == [0, 1, 2] and epochs[0]["planned_updates"] == 10
    with open(os.path.join(run_dir, "eval.json")) as f:
        report = json.load(f)
    assert report["epochs"] == 3 and report["updates"] == 10
    cfg = get_config(None, OPTS + ["TRAIN.TIME_BUDGET", "1000"])
    planned = build_schedule(cfg, derive(cfg), 4, total_updates=10)
    steps = records(run_dir, "step")
    assert steps[-1]["step"] == 10 and steps[-1]["lr"] == pytest.approx(planned.lr_at(9), rel=1e-6)
    assert planned.lr_at(9) < planned.lr_at(8) and planned.lr_at(10) == planned.min_lr  # the decay ends at 10
    final = torch.load(os.path.join(run_dir, "ckpt_epoch_2.pth"), weights_only=True, map_location="cpu")
    assert final["global_step"] == 10 and final["planned_updates"] == 10

    # resumed after epoch 1 with the planner gone: the saved length stands, the same weights come out
    monkeypatch.undo()
    assert os.path.exists(os.path.join(run_dir, "ckpt_epoch_1.pth"))
    os.remove(os.path.join(run_dir, "ckpt_epoch_2.pth"))
    os.remove(os.path.join(run_dir, "eval.json"))
    _run(tmp_path, "TRAIN.TIME_BUDGET", "1000")
    again = torch.load(os.path.join(run_dir, "ckpt_epoch_2.pth"), weights_only=True, map_location="cpu")
    assert again["global_step"] == 10 and not os.path.exists(os.path.join(run_dir, "ckpt_epoch_3.pth"))
    for k, v in final["model"].items():
        assert torch.equal(again["model"][k], v), k


@pytest.mark.parametrize("stop_after", [9, 10])
def test_a_stop_inside_the_shortened_last_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch, stop_after):
    """The planned 10 updates end half way through epoch 2 (updates 9 and 10). SIGTERM after update 9 (inside that
    epoch) or after update 10 (its last, before its evaluation) saves a mid-epoch checkpoint; the same command then
    finishes the run to the weights of an uninterrupted one."""
    import importlib
    import signal

    from engine import train as train_module

    run_module = importlib.import_module("engine.run")
    monkeypatch.setattr(run_module, "updates_within_budget", lambda *args: 10)  # 2.5 epochs of 4 updates
    uninterrupted = _run(tmp_path / "a", "TRAIN.TIME_BUDGET", "1000")

    real_step, calls = train_module._optimizer_step, []

    def step_then_signal(ctx, bad):  # a real SIGTERM to this process, right after the chosen update
        real_step(ctx, bad)
        calls.append(1)
        if len(calls) == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module, "_optimizer_step", step_then_signal)
    stopped = _run(tmp_path / "b", "TRAIN.TIME_BUDGET", "1000")
    name = f"ckpt_epoch_2_step_{stop_after}.pth"
    assert os.path.exists(os.path.join(stopped, name)) and not os.path.exists(os.path.join(stopped, "eval.json"))
    saved = torch.load(os.path.join(stopped, name), weights_only=True, map_location="cpu")
    assert saved["planned_updates"] == 10 and saved["epoch_progress"]["micro_batches"] == stop_after - 8

    monkeypatch.undo()  # the planner and the signal gone: the saved length stands
    _run(tmp_path / "b", "TRAIN.TIME_BUDGET", "1000")
    with open(os.path.join(stopped, "eval.json")) as f:
        assert json.load(f)["updates"] == 10
    a, b = (torch.load(os.path.join(d, "ckpt_epoch_2.pth"), weights_only=True, map_location="cpu")
            for d in (uninterrupted, stopped))
    assert b["global_step"] == 10 and not os.path.exists(os.path.join(stopped, "ckpt_epoch_3.pth"))
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), k
