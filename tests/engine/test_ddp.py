"""Two gloo processes x batch B train and evaluate like one process x batch 2B (DDP, no_sync, exact eval)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from data.samplers import ExactEvalSampler
from engine.evaluate import evaluate
from engine.train import TrainState, train_one_epoch
from tests.helpers.engine import FP32_CPU, fixed_batches, sgd_context, tiny_model

WORLD, MICRO, ACC, UPDATES = 2, 2, 2, 2  # per update: 2 ranks x 2 micro-batches x 2 images = 8 images
VAL_IMAGES = 13  # not divisible by the world size or the batch: shards and last batches differ in size


def _rank_micro_batches(rank: int) -> list:
    out = []
    for x, y in fixed_batches(UPDATES, WORLD * MICRO * ACC):
        for m in range(ACC):
            lo = rank * MICRO * ACC + m * MICRO
            out.append((x[lo:lo + MICRO], y[lo:lo + MICRO]))
    return out


def _val_loader(rank: int, world: int) -> DataLoader:
    x, y = fixed_batches(1, VAL_IMAGES, seed=9)[0]
    return DataLoader(TensorDataset(x, y), batch_size=4, sampler=ExactEvalSampler(VAL_IMAGES, world, rank))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        model = tiny_model(seed=rank)  # different initial weights: DDP must broadcast rank 0's
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        ctx = sgd_context(model, accumulation_steps=ACC, world_size=WORLD)
        stats = train_one_epoch(ddp, _rank_micro_batches(rank), ctx, TrainState())
        result = evaluate(model, _val_loader(rank, WORLD), FP32_CPU)
        torch.save({"state": model.state_dict(), "eval": result, "updates": stats.updates},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="fork")
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    model = tiny_model(seed=0)
    ctx = sgd_context(model)
    train_one_epoch(model, fixed_batches(UPDATES, WORLD * MICRO * ACC), ctx, TrainState())
    assert outs[0]["updates"] == UPDATES
    for name, ref in model.state_dict().items():
        assert torch.equal(outs[0]["state"][name], outs[1]["state"][name]), name  # ranks stay identical
        torch.testing.assert_close(outs[0]["state"][name], ref, atol=2e-6, rtol=1e-5, msg=name)

    single = evaluate(model, _val_loader(0, 1), FP32_CPU)
    for out in outs:
        ev = out["eval"]
        assert (ev.num_images, ev.correct1, ev.correct5) == (VAL_IMAGES, single.correct1, single.correct5)
        assert abs(ev.loss - single.loss) < 1e-5
    assert 0 < single.correct5 < VAL_IMAGES  # the counts are informative, not all-or-nothing
