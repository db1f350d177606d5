"""Samplers: torch DistributedSampler parity, DeiT RA coverage, exact eval sharding, determinism, resume."""
import collections
import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from data import build_loaders
from data.samplers import DistributedTrainSampler, ExactEvalSampler, RASampler, ShardTrainSampler
from tests.helpers.data import make_cfg


def _idx(sampler):
    return [i for i, _ in sampler]


@pytest.mark.parametrize("n,ws", [(19, 1), (19, 3), (64, 4)])
def test_distributed_order_matches_torch(n, ws):
    for rank in range(ws):
        ours = DistributedTrainSampler(n, ws, rank, seed=5)
        ref = DistributedSampler(range(n), num_replicas=ws, rank=rank, shuffle=True, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert _idx(ours) == list(ref) and len(ours) == len(ref)


def test_ra_sampler_coverage_and_deit_length():
    n, reps = 50, 3
    for ws in (1, 2, 3):
        per_rank = [RASampler(n, ws, r, seed=1, repeats=reps, num_selected=math.ceil(n * reps / ws)) for r in range(ws)]
        counts = collections.Counter()
        for s in per_rank:
            s.set_epoch(2)
            counts.update(_idx(s))
        assert sorted(counts) == list(range(n))
        # every index exactly `reps` times; padding (ws not dividing n*reps) adds at most one copy of a few
        assert all(reps <= c <= reps + 1 for c in counts.values())
        assert sum(counts.values()) - n * reps == -(n * reps) % ws
        if ws == reps:  # the copies of one image go to different ranks
            assert all(len(set(_idx(s))) == len(s) for s in per_rank)
    # DeiT's epoch length: floor(N / 256) * 256 / world_size per rank, a prefix of the rank's share
    full = RASampler(600, 2, 1, seed=0, repeats=3, num_selected=900)
    deit = RASampler(600, 2, 1, seed=0, repeats=3)
    assert len(deit) == 256 and _idx(deit) == _idx(full)[:256]
    small = RASampler(100, 2, 0, seed=0)  # < 256 images: one data set's worth rather than nothing
    assert len(small) == 50


def test_ra_matches_deit_reference():
    """DeiT RASampler: randperm(seeded by epoch) -> repeat_interleave -> pad -> rank stride -> truncate."""
    n, ws, reps, epoch = 520, 3, 3, 4
    g = torch.Generator()
    g.manual_seed(epoch)
    stream = torch.repeat_interleave(torch.randperm(n, generator=g), repeats=reps).tolist()
    total = math.ceil(n * reps / ws) * ws
    stream += stream[: total - len(stream)]
    for rank in range(ws):
        s = RASampler(n, ws, rank, seed=0, repeats=reps)
        s.set_epoch(epoch)
        assert _idx(s) == stream[rank:total:ws][: int(math.floor(n // 256 * 256 / ws))]


@pytest.mark.parametrize("ws", [1, 2, 3])
def test_exact_eval_sharding(ws):
    shards = [list(ExactEvalSampler(19, ws, r)) for r in range(ws)]
    assert sorted(i for s in shards for i in s) == list(range(19))  # no padding, no duplicates
    assert [len(ExactEvalSampler(19, ws, r)) for r in range(ws)] == [len(s) for s in shards]
    cfg = make_cfg(DATA__DATASET="synthetic", DATA__SYNTHETIC_TRAIN_SIZE=20, DATA__SYNTHETIC_VAL_SIZE=19)
    labels = []
    for r in range(ws):
        labels += [y for _, ys in build_loaders(cfg, r, ws, torch.device("cpu")).val_loader for y in ys.tolist()]
    assert len(labels) == 19


def test_shard_sampler_equal_steps_and_own_shard():
    for ws in (2, 3):
        lens = set()
        for r in range(ws):
            s = ShardTrainSampler(20, ws, r, seed=0)
            s.set_epoch(1)
            idx = _idx(s)
            assert all(i % ws == r for i in idx) and len(set(idx)) == len(idx)
            lens.add(len(idx))
        assert lens == {20 // ws}


def test_determinism_and_mid_epoch_start():
    for cls in (DistributedTrainSampler, RASampler, ShardTrainSampler):
        a, b = cls(300, 2, 1, seed=7), cls(300, 2, 1, seed=7)
        a.set_epoch(3)
        b.set_epoch(3)
        pairs = list(a)
        assert pairs == list(b)  # indices and augmentation seeds
        b.set_epoch(4)
        assert [i for i, _ in b] != [i for i, _ in pairs]
        c = cls(300, 2, 1, seed=8)
        c.set_epoch(3)
        assert list(c) != pairs
        a.set_epoch(3, start_index=10)
        assert list(a) == pairs[10:] and len(a) == len(pairs) - 10
        a.set_epoch(4)
        assert len(a) == len(pairs)
        assert len({s for _, s in pairs}) == len(pairs)  # distinct seeds even for repeated indices
