"""train_one_epoch: accumulation, the trailing partial group, non-finite updates, overfitting, the loss
factory and the EMA update."""
from __future__ import annotations

import copy

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from engine.ema import build_ema, ema_update
from engine.optim import build_optimizer
from engine.train import NonFiniteTrainingError, TrainState, build_criterion, train_one_epoch
from tests.helpers.engine import constant_lr, fixed_batches, sgd_context, tiny_cfg, tiny_model


def _train(model, batches, **kw) -> TrainState:
    state = TrainState()
    train_one_epoch(model, batches, sgd_context(model, **kw), state)
    return state


def _assert_same_weights(a, b, atol=1e-6):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5, msg=name)


def _split(batches, parts):
    return [(x[i::parts], y[i::parts]) for x, y in batches for i in range(parts)]


def test_accumulation_equals_full_batch():
    full = fixed_batches(2, 8)
    a, b = tiny_model(), tiny_model()
    sa = _train(a, full)
    sb = _train(b, [(x[k:k + 4], y[k:k + 4]) for x, y in full for k in (0, 4)], accumulation_steps=2)
    assert sa.global_step == sb.global_step == 2
    _assert_same_weights(a, b)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), tiny_model().state_dict().values()))


def test_trailing_partial_group_updates_with_its_own_mean():
    # 3 micro-batches with ACC 2: update 1 = mean of batches 0+1, update 2 = batch 2 alone.
    micro = fixed_batches(3, 4, seed=3)
    a, b = tiny_model(), tiny_model()
    sa = _train(a, micro, accumulation_steps=2)
    merged = [(torch.cat([micro[0][0], micro[1][0]]), torch.cat([micro[0][1], micro[1][1]])), micro[2]]
    sb = _train(b, merged)
    assert sa.global_step == sb.global_step == 2
    _assert_same_weights(a, b)


def test_lr_of_update_k_is_schedule_at_k():
    model = tiny_model()
    ctx = sgd_context(model)
    seen = []
    ctx.schedule = type("S", (), {"lr_at": lambda self, k: seen.append(k) or 0.01 * (k + 1)})()
    state = TrainState(global_step=7)
    train_one_epoch(model, fixed_batches(3, 2), ctx, state)
    assert seen == [7, 8, 9] and state.global_step == 10
    assert ctx.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize("fused", [True, False])
def test_non_finite_update_is_skipped(fused):
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    batches = fixed_batches(1, 4)
    batches[0][0][1] = float("nan")
    ctx = sgd_context(model, fused=fused)
    stats = train_one_epoch(model, batches, ctx, TrainState())
    assert stats.skipped == 1 and stats.updates == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for s in ctx.optimizer.state.values():  # momentum untouched (torch's fused SGD would leave garbage here)
        assert not s["momentum_buffer"].any()


def test_too_many_bad_steps_stop_the_run():
    model = tiny_model()
    batches = fixed_batches(4, 2)
    for x, _ in batches[1:]:
        x.fill_(float("inf"))
    ctx = sgd_context(model)
    ctx.max_bad_steps = 3
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive updates.*MAX_BAD_STEPS"):
        train_one_epoch(model, batches, ctx, TrainState())
    ctx.max_bad_steps = 4  # 3 bad in a row is tolerated
    assert train_one_epoch(model, batches, ctx, TrainState()).skipped == 3


def test_tiny_model_overfits_a_fixed_batch():
    cfg = tiny_cfg("TRAIN.WEIGHT_DECAY", "0.0")
    model = tiny_model()
    ctx = sgd_context(model)
    ctx.optimizer = build_optimizer(cfg, model, 1e-2, torch.device("cpu"))
    ctx.schedule = constant_lr(1e-2)
    batch = fixed_batches(1, 8, seed=5)
    first = train_one_epoch(model, batch, ctx, TrainState()).loss
    state = TrainState()
    stats = train_one_epoch(model, batch * 14, ctx, state)
    last = train_one_epoch(model, batch, ctx, state).loss
    assert stats.updates == 14 and last < first / 2, (first, last)


def test_criterion_factory():
    assert isinstance(build_criterion(tiny_cfg(), mixup=True), SoftTargetCrossEntropy)
    smooth = build_criterion(tiny_cfg("MODEL.LABEL_SMOOTHING", "0.1"), mixup=False)
    assert isinstance(smooth, LabelSmoothingCrossEntropy) and smooth.smoothing == 0.1
    assert type(build_criterion(tiny_cfg(), mixup=False)) is torch.nn.CrossEntropyLoss


def test_ema_update_math():
    assert build_ema(tiny_cfg(), tiny_model()) is None
    model = tiny_model()
    ema = build_ema(tiny_cfg("MODEL_EMA.ENABLE", "True", "MODEL_EMA.DECAY", "0.9"), model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema_update(ema, model, 1)  # the first update copies the weights (timm's step convention)
    for k, v in model.state_dict().items():
        assert torch.equal(ema.module.state_dict()[k], v), k
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    ema_update(ema, model, 2)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(ema.module.state_dict()[k], 0.9 * old[k] + 0.1 * v, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(ema.module.state_dict()[k], v)  # integer buffers are copied


def test_ema_warmup_ramps_decay():
    ema = build_ema(tiny_cfg("MODEL_EMA.ENABLE", "True", "MODEL_EMA.DECAY", "0.9998", "MODEL_EMA.WARMUP", "True"),
                    tiny_model())
    assert ema.get_decay(11) == pytest.approx(1 - 11 ** (-2 / 3))  # 1 - (1 + (step - 1)) ** -power
    assert ema.get_decay(10**9) == 0.9998


def test_uint8_batches_are_prepared_on_the_device():
    """train_one_epoch and evaluate apply `prepare` (DeviceNormalize) to uint8 N x H x W x 3 batches: the same
    weights and evaluation as with the float batches the plain transform gives."""
    from data.fast import DeviceNormalize
    from engine.evaluate import evaluate
    from tests.helpers.engine import FP32_CPU

    g = torch.Generator().manual_seed(3)
    raw = [(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=g),
            torch.randint(10, (4,), generator=g)) for _ in range(3)]
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    prepare = DeviceNormalize(mean, std)
    # contiguous N x 3 x H x W as the plain transform collates them (a permuted view would run the patch
    # convolution on channels-last strides, another kernel with other rounding on some CPUs)
    floats = [((((x.permute(0, 3, 1, 2).float() / 255) - mean) / std).contiguous(), y) for x, y in raw]
    for (x, _), (f, _) in zip(raw, floats):
        assert torch.equal(prepare(x), f)
    a, b = tiny_model(0), tiny_model(0)
    ctx = sgd_context(a)
    ctx.prepare = prepare
    train_one_epoch(a, raw, ctx, TrainState())
    _train(b, floats)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert evaluate(a, raw, FP32_CPU, prepare=prepare) == evaluate(a, floats, FP32_CPU)
