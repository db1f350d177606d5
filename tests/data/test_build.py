"""build_loaders: the contract the engine relies on."""
import random

import numpy as np
import pytest
import torch

import data
from data.errors import NumClassesMismatchError
from tests.helpers.data import make_cfg

CPU = torch.device("cpu")


def test_synthetic_loaders_contract():
    cfg = make_cfg(DATA__DATASET="synthetic", DATA__SYNTHETIC_TRAIN_SIZE=18, DATA__SYNTHETIC_VAL_SIZE=7)
    L = data.build_loaders(cfg, 0, 1, CPU)
    assert L.num_classes == 3 and len(L.train_set) == 18 and len(L.val_set) == 7
    L.train_sampler.set_epoch(0)
    batches = list(L.train_loader)
    assert len(batches) == 18 // 4  # drop_last
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sum(len(y) for _, y in L.val_loader) == 7  # no drop, no padding
    assert L.train_prepare is None and L.val_prepare is None  # synthetic batches are the model's input
    xm, ym = L.mixup_fn(x, y)
    assert ym.shape == (4, 3) and torch.allclose(ym.sum(1), torch.ones(4))


def test_folder_loaders_and_class_order(folder):
    L = data.build_loaders(make_cfg(DATA__DATA_PATH=folder), 0, 1, CPU)
    assert L.train_set.classes == ["n01", "n02", "n03"] and L.num_classes == 3
    L.train_sampler.set_epoch(0)
    x, y = next(iter(L.train_loader))
    assert x.shape == (4, 32, 32, 3) and x.dtype == torch.uint8  # DATA.NORMALIZE_ON_DEVICE
    assert L.train_prepare(x).shape == (4, 3, 32, 32) and L.train_prepare(x).dtype == torch.float32
    labels = torch.cat([y for _, y in L.val_loader])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_num_classes_mismatch_names_both(folder):
    with pytest.raises(NumClassesMismatchError, match=r"MODEL.NUM_CLASSES is 1000 .* has 3 classes"):
        data.build_loaders(make_cfg(DATA__DATA_PATH=folder, MODEL__NUM_CLASSES=1000), 0, 1, CPU)
    assert issubclass(NumClassesMismatchError, ValueError)


def test_eval_only_builds_no_training_side(folder):
    L = data.build_loaders(make_cfg(DATA__DATA_PATH=folder), 0, 1, CPU, eval_only=True)
    assert L.train_loader is None and L.train_set is None and L.mixup_fn is None and len(L.val_set) == 6


def _first_batches(cfg, n=2):
    L = data.build_loaders(cfg, 0, 1, CPU)
    L.train_sampler.set_epoch(0)
    train = [x for x, _ in list(L.train_loader)[:n]]
    return L, train, torch.cat([x for x, _ in L.val_loader])


@pytest.mark.parametrize("img_size", [32, 48])  # padded random crop; RandomResizedCrop (resize_im)
def test_normalize_on_device_gives_the_same_bits(folder, img_size):
    """uint8 batches + Loaders.*_prepare == the float batches of the plain pipeline, bitwise (no erasing)."""
    base = dict(DATA__DATA_PATH=folder, DATA__IMG_SIZE=img_size, AUG__REPROB=0.0)
    on, on_train, on_val = _first_batches(make_cfg(**base))
    off, off_train, off_val = _first_batches(make_cfg(DATA__NORMALIZE_ON_DEVICE=False, **base))
    assert off.train_prepare is None and off.val_prepare is None and off_val.dtype == torch.float32
    assert on_val.dtype == torch.uint8 and on_val.shape == (6, img_size, img_size, 3)
    assert torch.equal(on.val_prepare(on_val), off_val)
    for a, b in zip(on_train, off_train):
        assert torch.equal(on.train_prepare(a), b)


def test_random_erasing_moves_to_the_device(folder):
    """With AUG.REPROB 1 every image of the prepared batch has exactly one erased box of noise; the
    rest is the un-erased image, bit for bit."""
    base = dict(DATA__DATA_PATH=folder, DATA__IMG_SIZE=48)
    plain = _first_batches(make_cfg(AUG__REPROB=0.0, **base))[1]
    L, train, val = _first_batches(make_cfg(AUG__REPROB=1.0, **base))
    assert torch.equal(L.val_prepare(val), _first_batches(make_cfg(AUG__REPROB=0.0, **base))[0].val_prepare(val))
    for x, ref in zip(train, plain):
        assert torch.equal(x, ref)  # the loader itself does not erase
        changed = (L.train_prepare(x) != L.val_prepare(ref)).any(dim=1)  # N x H x W
        for m in changed:
            rows, cols = m.any(1).nonzero()[:, 0], m.any(0).nonzero()[:, 0]
            assert len(rows) and m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
            assert m.sum() == len(rows) * len(cols)  # one filled rectangle


def _epoch_batches(L, epoch, start_index=0):
    L.train_sampler.set_epoch(epoch, start_index=start_index)
    return [(x.clone(), y.clone()) for x, y in L.train_loader]


def test_augmentations_independent_of_workers_and_resume(folder):
    """Same SEED -> bitwise the same augmented batches, with 0 or 2 workers, from a fresh process state
    (resume at an epoch boundary) and mid-epoch (start_index)."""
    base = dict(DATA__DATA_PATH=folder, DATA__BATCH_SIZE=3, DATA__PERSISTENT_WORKERS=True, AUG__MIXUP=0.0,
                AUG__CUTMIX=0.0)
    a = data.build_loaders(make_cfg(**base), 0, 1, CPU)
    run = [_epoch_batches(a, e) for e in range(2)]
    torch.manual_seed(123)  # the main-process RNG state must not matter
    b = data.build_loaders(make_cfg(DATA__NUM_WORKERS=2, **base), 0, 1, CPU)
    resumed = _epoch_batches(b, 1)
    assert len(resumed) == len(run[1]) == 5
    for (x0, y0), (x1, y1) in zip(run[1], resumed):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    mid = _epoch_batches(b, 1, start_index=6)
    assert len(mid) == 3 and all(torch.equal(m[0], r[0]) for m, r in zip(mid, run[1][2:]))
    assert not torch.equal(run[0][0][0], run[1][0][0])  # epochs differ
    c = data.build_loaders(make_cfg(SEED=1, **base), 0, 1, CPU)
    assert not torch.equal(_epoch_batches(c, 1)[0][0], run[1][0][0])  # seeds differ


def test_batched_fetch_equals_single_fetch_and_keeps_main_rngs(folder):
    """__getitems__ (the DataLoader's batched fetch) == one __getitem__ per item, and the main process's
    python/numpy/torch RNG states come back untouched (they are saved once per batch, not per image)."""
    ds = data.build_loaders(make_cfg(DATA__DATA_PATH=folder), 0, 1, CPU).train_set
    items = [(i, 1000 + 7 * i) for i in range(len(ds))]
    before = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    batch = ds.__getitems__(items)
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert len(batch) == len(items)
    for item, (x, y) in zip(items, batch):
        x1, y1 = ds[item]
        assert torch.equal(x, x1) and y == y1
    assert not torch.equal(batch[0][0], ds[(0, 1)][0])  # the seed decides the augmentation
    # plain indices are not seeded: they draw from (and advance) the ambient RNGs, as __getitem__ does
    torch.manual_seed(5)
    plain = ds.__getitems__([0, 0])
    assert not torch.equal(torch.get_rng_state(), before[2]) and not torch.equal(plain[0][0], plain[1][0])


def test_synthetic_is_deterministic_and_learnable_shape():
    cfg = make_cfg(DATA__DATASET="synthetic", DATA__SYNTHETIC_TRAIN_SIZE=8, DATA__SYNTHETIC_VAL_SIZE=4)
    ds1, n = data.build_dataset(True, cfg)
    ds2, _ = data.build_dataset(True, make_cfg(DATA__DATASET="synthetic", SEED=9))
    assert n == 3 and torch.equal(ds1[5][0], ds2[5][0]) and ds1[5][1] == ds2[5][1]
    val, _ = data.build_dataset(False, cfg)
    assert not torch.equal(val[0][0], ds1[0][0])
    assert ds1[(5, 123)][0].shape == (3, 32, 32)  # sampler pairs are accepted
