"""Random erasing on the device (DATA.NORMALIZE_ON_DEVICE) draws from the training process's RNGs: seeded per
(SEED, rank, epoch) and saved in checkpoints, so a mid-epoch resume in a fresh process repeats it exactly."""
import pytest
import torch

from data import build_loaders
from engine.rng import capture_rng_state, epoch_seed, restore_rng_state, seed_everything
from tests.helpers.data import make_cfg, write_folder


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_repeats_device_erasing_and_mixup(tmp_path, workers):
    root = write_folder(tmp_path / "imagenet", per_class=(8, 2))
    cfg = make_cfg(DATA__DATA_PATH=root, DATA__IMG_SIZE=48, AUG__REPROB=0.5, DATA__NUM_WORKERS=workers)
    L = build_loaders(cfg, 0, 1, torch.device("cpu"))
    assert L.train_prepare is not None and L.mixup_fn is not None
    batch, epoch = cfg.DATA.BATCH_SIZE, 1

    def steps(start: int = 0, stop: int | None = None, state: dict | None = None):
        """The engine's order: epoch seeding (or the checkpoint's RNG state), prepare, mixup, other draws."""
        if state is None:
            seed_everything(epoch_seed(cfg.SEED, 0, epoch))
        else:
            restore_rng_state(state)
        L.train_sampler.set_epoch(epoch, start_index=start * batch)
        out = []
        for k, (x, y) in enumerate(L.train_loader, start=start):
            x, y = L.mixup_fn(L.train_prepare(x), y)
            torch.rand(3)  # drop path and dropout draw from the same generator
            out.append((x, y))
            if stop is not None and k + 1 == stop:
                return out, capture_rng_state()  # what a mid-epoch checkpoint saves
        return out, None

    full, _ = steps()
    first, state = steps(stop=2)
    seed_everything(12345)  # a new process: other RNG states until the checkpoint's are restored
    rest, _ = steps(start=2, state=state)
    assert len(full) == len(first) + len(rest) == 6
    for (x0, y0), (x1, y1) in zip(full, first + rest):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    plain = make_cfg(DATA__DATA_PATH=root, DATA__IMG_SIZE=48, AUG__REPROB=0.0, DATA__NUM_WORKERS=workers)
    seed_everything(epoch_seed(cfg.SEED, 0, epoch))
    L0 = build_loaders(plain, 0, 1, torch.device("cpu"))
    L0.train_sampler.set_epoch(epoch)
    x0 = L0.val_prepare(next(iter(L0.train_loader))[0])
    seed_everything(epoch_seed(cfg.SEED, 0, epoch))
    L.train_sampler.set_epoch(epoch)
    x1 = L.train_prepare(next(iter(L.train_loader))[0])
    assert not torch.equal(x0, x1)  # erasing did happen (and so the comparison above covers it)
