"""The pieces of preemption: a stopped epoch continued later equals an uninterrupted one, the mid-epoch checkpoint
format and its ordering/pruning, leftover temp files, the signal flag and the dead-peer message."""
from __future__ import annotations

import logging
import os
import signal

import pytest
import torch

import engine.checkpoint as ck
from engine.rng import capture_rng_state
from configs import derive
from engine.distributed import DistInfo, StopRequest, peer_failure_message
from engine.optim import steps_per_epoch
from engine.state import Run, checkpoint_state, restore_state
from engine.train import TrainState, train_one_epoch
from tests.helpers.engine import fixed_batches, sgd_context, tiny_cfg, tiny_model


@pytest.mark.parametrize("num_batches, stop_after", [(8, 2), (7, 3), (7, 4)])
def test_stopped_epoch_continued_later_equals_uninterrupted(num_batches, stop_after):
    batches = fixed_batches(num_batches, 4)
    whole = tiny_model()
    train_one_epoch(whole, batches, sgd_context(whole, accumulation_steps=2), TrainState())

    model = tiny_model()
    ctx, state = sgd_context(model, accumulation_steps=2), TrainState()
    calls = []

    def stop() -> int:  # called once after every update
        calls.append(1)
        return signal.SIGTERM if len(calls) == stop_after else 0

    ctx.stop = stop
    stats = train_one_epoch(model, batches, ctx, state)
    consumed = min(2 * stop_after, num_batches)  # (7, 4): the stop falls after the trailing partial group
    assert (stats.stop_signal, stats.updates, state.epoch_batches, state.global_step) == (
        signal.SIGTERM, stop_after, consumed, stop_after)
    ctx.stop = None
    stats = train_one_epoch(model, batches[consumed:], ctx, state)
    assert stats.updates == (num_batches + 1) // 2 - stop_after and state.epoch_batches == 0
    for name, value in whole.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def _save(d: str, name: str) -> str:
    path = os.path.join(d, name)
    ck.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 0})
    return path


def test_resume_and_pruning_order_mid_epoch_checkpoints_by_progress(tmp_path):
    d = str(tmp_path)
    assert ck.mid_epoch_checkpoint_path(d, 3, 250) == os.path.join(d, "ckpt_epoch_3_step_250.pth")
    for name in ("ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "ckpt_epoch_2_step_180.pth", "ckpt_epoch_3_step_230.pth"):
        _save(d, name)
    assert ck.find_resume_checkpoint(d) == os.path.join(d, "ckpt_epoch_3_step_230.pth")
    # The newest (mid-epoch) checkpoint stays, older mid-epoch ones go; they do not count towards keep_last.
    assert ck.prune_checkpoints(d, keep_last=1) == [os.path.join(d, "ckpt_epoch_2_step_180.pth"),
                                                    os.path.join(d, "ckpt_epoch_1.pth")]
    _save(d, "ckpt_epoch_3_step_240.pth")
    _save(d, "ckpt_epoch_3.pth")  # epoch 3 finished: beats every checkpoint stopped inside it
    assert ck.find_resume_checkpoint(d) == os.path.join(d, "ckpt_epoch_3.pth")
    ck.prune_checkpoints(d, keep_last=1)
    assert sorted(os.listdir(d)) == ["ckpt_epoch_3.pth"]


def test_a_broken_newest_mid_epoch_checkpoint_never_costs_the_last_good_one(tmp_path):
    d = str(tmp_path)
    _save(d, "ckpt_epoch_0.pth")
    with open(_save(d, "ckpt_epoch_1_step_9.pth"), "r+b") as f:
        f.truncate(20)
    assert ck.find_resume_checkpoint(d) == os.path.join(d, "ckpt_epoch_0.pth")
    ck.prune_checkpoints(d, keep_last=0)
    assert sorted(os.listdir(d)) == ["ckpt_epoch_0.pth"]


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    d = str(tmp_path)
    names = [".ckpt_epoch_4.pth.0123456789ab.tmp", ".ckpt_epoch_4_step_7.pth.ba9876543210.tmp"]
    keep = ["ckpt_epoch_3.pth", ".eval.json.0123456789ab.tmp", "notes.tmp"]
    for n in names + keep:
        open(os.path.join(d, n), "w").close()
    assert sorted(ck.remove_stale_temp_files(d)) == sorted(os.path.join(d, n) for n in names)
    assert sorted(os.listdir(d)) == sorted(keep)
    assert ck.remove_stale_temp_files(str(tmp_path / "missing")) == []


def _run_of(cfg, model, batches: int) -> Run:
    return Run(cfg=cfg, info=DistInfo(0, 1, 0, torch.device("cpu")), derived=derive(cfg, 1, 10), model=model,
               raw=model, train=sgd_context(model), batches=batches,
               updates=steps_per_epoch(batches, cfg.TRAIN.ACCUMULATION_STEPS))


def test_mid_epoch_checkpoint_round_trip_and_changed_layout(caplog):
    cfg = tiny_cfg("DATA.BATCH_SIZE", "8", "TRAIN.ACCUMULATION_STEPS", "2")
    run = _run_of(cfg, tiny_model(), 18)
    run.state = TrainState(epoch=3, global_step=40, epoch_batches=6, epoch_loss=(13.5, 6.0))
    ckpt = checkpoint_state(run, [capture_rng_state()])
    assert ckpt["epoch"] == 2 and ckpt["epoch_progress"] == {
        "epoch": 3, "micro_batches": 6, "batch_size": 8, "accumulation_steps": 2, "world_size": 1,
        "loss_sum": 13.5, "loss_count": 6.0}
    assert ckpt["lr_scheduler"] == {"step": 40, "updates_per_epoch": 9}
    back, _ = restore_state(ckpt, "c.pth", _run_of(cfg, tiny_model(1), 18))
    assert (back.epoch, back.global_step, back.epoch_batches, back.epoch_loss) == (3, 40, 6, (13.5, 6.0))

    other = tiny_cfg("DATA.BATCH_SIZE", "4", "TRAIN.ACCUMULATION_STEPS", "2")
    with caplog.at_level(logging.WARNING):
        back, _ = restore_state(ckpt, "c.pth", _run_of(other, tiny_model(1), 36))
    assert (back.epoch, back.global_step, back.epoch_batches, back.epoch_loss) == (3, 40, 0, (0.0, 0.0))
    assert "batch_size 8 -> 4" in caplog.text and "epoch 3 restarts from its first batch" in caplog.text


def test_stop_request_turns_signals_into_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequest() as stop:
        assert stop.agreed() == 0
        os.kill(os.getpid(), signal.SIGUSR1)  # would end the process with the default handler
        assert stop.received == signal.SIGUSR1 and stop.agreed() == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


def test_peer_failure_message_only_for_collective_failures():
    assert peer_failure_message(RuntimeError("Connection reset by peer"), 0) is None  # no process group here
    message = peer_failure_message(torch.distributed.DistBackendError("NCCL watchdog timeout\nmore"), 3)
    assert message.startswith("Rank 3 lost contact") and "DistBackendError: NCCL watchdog timeout)" in message
