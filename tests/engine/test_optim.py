"""Parameter groups, optimizer choice and the learning-rate schedule against timm's schedulers."""
from __future__ import annotations

import math

import pytest
import torch
from timm.scheduler.cosine_lr import CosineLRScheduler
from timm.scheduler.step_lr import StepLRScheduler

from configs import derive
from engine.optim import build_optimizer, build_schedule, no_decay_names, param_groups, steps_per_epoch
from tests.helpers.engine import tiny_cfg, tiny_model

TINY_DECAYED = {
    "patch_embed.proj.weight", "layers.0.downsample.reduction.weight", "head.weight",
    *(f"layers.{i}.blocks.0.{n}.weight" for i in (0, 1) for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")),
}


def test_no_decay_membership_tiny_swin():
    model = tiny_model()
    names = {n for n, _ in model.named_parameters()}
    assert names - no_decay_names(model) == TINY_DECAYED
    assert "layers.1.blocks.0.attn.relative_position_bias_table" in no_decay_names(model)  # 2-D, by keyword
    groups = param_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(names)
    ape = tiny_model(0, "MODEL.SWIN.APE", "True")
    assert "absolute_pos_embed" in no_decay_names(ape)  # 3-D, by no_weight_decay()


def test_no_decay_without_model_methods_and_frozen_params():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    assert no_decay_names(model) == {"0.bias", "1.weight", "1.bias", "2.bias"}
    decay, no_decay = param_groups(model, 0.1)
    assert decay["params"] == [model[0].weight]  # frozen weights are in no group


@pytest.mark.parametrize("name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_build_optimizer(name, cls):
    cfg = tiny_cfg("TRAIN.OPTIMIZER.NAME", name, "TRAIN.OPTIMIZER.EPS", "1e-7", "TRAIN.OPTIMIZER.BETAS", "(0.8, 0.99)")
    opt = build_optimizer(cfg, tiny_model(), 1e-3, torch.device("cpu"))
    assert type(opt) is cls and opt.defaults["fused"] is True and opt.param_groups[0]["lr"] == 1e-3
    if name == "adamw":
        assert opt.defaults["eps"] == 1e-7 and opt.defaults["betas"] == (0.8, 0.99)
    else:
        assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == 0.9


def test_steps_per_epoch_counts_the_partial_group():
    assert [steps_per_epoch(n, 4) for n in (1, 4, 5, 8, 9)] == [1, 1, 2, 2, 3]
    assert steps_per_epoch(10, 1) == 10


def _timm_values(sched, steps: int) -> list[float]:
    out = []
    for t in range(steps):
        sched.step_update(t)  # as timm's train.py: after update t-1, the lr of update t
        out.append(sched.optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("prefix", [True, False])
@pytest.mark.parametrize("epochs,warmup,batches,acc", [(7, 2, 5, 1), (5, 1, 7, 2), (3, 0, 4, 1)])
def test_cosine_matches_timm_every_step(prefix, epochs, warmup, batches, acc):
    cfg = tiny_cfg("TRAIN.EPOCHS", str(epochs), "TRAIN.WARMUP_EPOCHS", str(warmup),
                   "TRAIN.LR_SCHEDULER.WARMUP_PREFIX", str(prefix), "TRAIN.ACCUMULATION_STEPS", str(acc))
    derived = derive(cfg, world_size=2)
    spe = steps_per_epoch(batches, acc)
    ours = build_schedule(cfg, derived, spe)
    total, warm = epochs * spe, warmup * spe
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=derived.base_lr)
    timm = CosineLRScheduler(opt, t_initial=(total - warm) if prefix else total, lr_min=derived.min_lr,
                             warmup_lr_init=derived.warmup_lr, warmup_t=warm, cycle_limit=1, t_in_epochs=False,
                             warmup_prefix=prefix)
    expected = _timm_values(timm, total + 3)
    assert [ours.lr_at(t) for t in range(total + 3)] == expected  # bit for bit
    assert ours.lr_at(0) == derived.warmup_lr if warm else ours.lr_at(0) == derived.base_lr


def test_step_schedule_matches_timm():
    cfg = tiny_cfg("TRAIN.LR_SCHEDULER.NAME", "step", "TRAIN.EPOCHS", "10", "TRAIN.WARMUP_EPOCHS", "2",
                   "TRAIN.LR_SCHEDULER.DECAY_EPOCHS", "3", "TRAIN.LR_SCHEDULER.DECAY_RATE", "0.5")
    derived = derive(cfg)
    ours = build_schedule(cfg, derived, 4)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=derived.base_lr)
    timm = StepLRScheduler(opt, decay_t=12, decay_rate=0.5, warmup_t=8, warmup_lr_init=derived.warmup_lr,
                           warmup_prefix=True, t_in_epochs=False)
    assert [ours.lr_at(t) for t in range(40)] == _timm_values(timm, 40)


def test_multistep_drops_at_milestone_epochs():
    cfg = tiny_cfg("TRAIN.LR_SCHEDULER.NAME", "multistep", "TRAIN.EPOCHS", "10", "TRAIN.WARMUP_EPOCHS", "1",
                   "TRAIN.LR_SCHEDULER.MULTISTEPS", "[3, 6]", "TRAIN.LR_SCHEDULER.GAMMA", "0.1")
    derived = derive(cfg)
    s = build_schedule(cfg, derived, 5)
    assert s.lr_at(0) == derived.warmup_lr and s.lr_at(4) < derived.base_lr
    assert s.lr_at(5) == s.lr_at(14) == derived.base_lr
    assert s.lr_at(15) == s.lr_at(29) == pytest.approx(derived.base_lr * 0.1, rel=1e-15)
    assert s.lr_at(30) == pytest.approx(derived.base_lr * 0.01, rel=1e-15)


def test_cosine_end_points():
    cfg = tiny_cfg("TRAIN.EPOCHS", "4", "TRAIN.WARMUP_EPOCHS", "1")
    derived = derive(cfg)
    s = build_schedule(cfg, derived, 10)
    assert s.lr_at(10) == derived.base_lr  # first update after warmup: the peak
    assert s.lr_at(39) > derived.min_lr and s.lr_at(40) == derived.min_lr
    assert math.isclose(s.lr_at(25), (derived.base_lr + derived.min_lr) / 2, rel_tol=1e-12)
