"""build_loaders: the contract the engine relies on."""
import pytest
import torch

import data
from data.errors import NumClassesMismatchError
from tests.data.conftest import make_cfg

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
    xm, ym = L.mixup_fn(x, y)
    assert ym.shape == (4, 3) and torch.allclose(ym.sum(1), torch.ones(4))


def test_folder_loaders_and_class_order(folder):
    L = data.build_loaders(make_cfg(DATA__DATA_PATH=folder), 0, 1, CPU)
    assert L.train_set.classes == ["n01", "n02", "n03"] and L.num_classes == 3
    L.train_sampler.set_epoch(0)
    x, y = next(iter(L.train_loader))
    assert x.shape == (4, 3, 32, 32)
    labels = torch.cat([y for _, y in L.val_loader])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_num_classes_mismatch_names_both(folder):
    with pytest.raises(NumClassesMismatchError, match=r"MODEL.NUM_CLASSES is 1000 .* has 3 classes"):
        data.build_loaders(make_cfg(DATA__DATA_PATH=folder, MODEL__NUM_CLASSES=1000), 0, 1, CPU)
    assert issubclass(NumClassesMismatchError, ValueError)


def test_eval_only_builds_no_training_side(folder):
    L = data.build_loaders(make_cfg(DATA__DATA_PATH=folder), 0, 1, CPU, eval_only=True)
    assert L.train_loader is None and L.train_set is None and L.mixup_fn is None and len(L.val_set) == 6
