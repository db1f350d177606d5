"""Checkpoint format: atomic save, non-finite refusal, safe loading, auto-resume, pruning, RNG round trips."""
import errno
import logging
import os
import random

import numpy as np
import pytest
import torch

from engine import checkpoint as ck
from engine.checkpoint import (
    CheckpointError,
    checkpoint_path,
    find_resume_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from engine.rng import capture_rng_state, restore_rng_state
from tests.helpers.processes import write_malicious_checkpoint


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(64, 64, generator=g), "b": torch.zeros(64), "idx": torch.arange(5)},
        "optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "lr_scheduler": {"step": 7},
        "epoch": seed,
        "global_step": 7,
        "max_accuracy": 12.5,
        "rng": [capture_rng_state()],
        "config": "MODEL:\n  NAME: tiny\n",
        "derived": {"world_size": 1, "base_lr": 1e-3},
    }


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _tmp_files(d):
    return [n for n in os.listdir(d) if n.endswith(".tmp")]


def test_checkpoint_path_uses_official_names(tmp_path):
    assert checkpoint_path(str(tmp_path), 12) == os.path.join(str(tmp_path), "ckpt_epoch_12.pth")


def test_save_load_round_trip_is_exact(tmp_path):
    path = str(tmp_path / "sub" / "ckpt_epoch_0.pth")
    state = _state()
    save_checkpoint(path, state)
    _assert_same(state, load_checkpoint(path))
    assert _tmp_files(tmp_path / "sub") == []


def test_saved_file_gets_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        save_checkpoint(str(tmp_path / "c.pth"), _state())
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "c.pth").st_mode & 0o777 == 0o640


def test_failed_write_keeps_old_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt_epoch_3.pth")
    old = _state(1)
    save_checkpoint(path, old)
    before = open(path, "rb").read()
    real_save = torch.save

    class DiskFull:
        """File wrapper whose writes fail with ENOSPC once 4 KiB have been written."""

        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(ck.torch, "save", lambda obj, f: real_save(obj, DiskFull(f)))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, _state(2))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    _assert_same(old, load_checkpoint(path))
    assert sorted(os.listdir(tmp_path)) == ["ckpt_epoch_3.pth"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("section", ["model", "ema"])
def test_refuses_to_save_non_finite_weights(tmp_path, bad, section):
    path = str(tmp_path / "ckpt_epoch_0.pth")
    state = _state()
    state[section] = {"layer": {"w": torch.ones(4)}}
    state[section]["layer"]["w"][2] = bad
    with pytest.raises(CheckpointError, match=rf"ckpt_epoch_0\.pth.*{section}\.layer\.w"):
        save_checkpoint(path, state)
    assert os.listdir(tmp_path) == []


def test_non_finite_optimizer_state_is_allowed(tmp_path):
    state = _state()
    state["optimizer"]["state"][0]["exp_avg"][0] = float("inf")
    save_checkpoint(str(tmp_path / "c.pth"), state)
    assert torch.isinf(load_checkpoint(str(tmp_path / "c.pth"))["optimizer"]["state"][0]["exp_avg"][0])


def test_load_missing_file_names_it(tmp_path):
    path = str(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="nope.pth.*does not exist"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0.5, 0.98, 0.0])
def test_load_truncated_file_names_it(tmp_path, keep):
    path = str(tmp_path / "ckpt_epoch_1.pth")
    save_checkpoint(path, _state())
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="ckpt_epoch_1.pth.*truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_rejected_without_running_code(tmp_path, zip_format):
    marker = tmp_path / "PWNED"
    path = str(tmp_path / "evil.pth")
    write_malicious_checkpoint(path, marker, zip_format)
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match=r"evil\.pth.*references [\w.]*open\), so it was not loaded and "
                                                   r"nothing in it was run") as info:
            load_checkpoint(path, mmap=mmap)
        assert "weights_only" not in str(info.value) and "safe_globals" not in str(info.value)
    assert not marker.exists()


def test_non_dict_checkpoint_is_rejected(tmp_path):
    path = str(tmp_path / "t.pth")
    torch.save(torch.ones(2), path)
    with pytest.raises(CheckpointError, match=r"t\.pth holds a Tensor"):
        load_checkpoint(path)


def test_legacy_format_loads_with_and_without_mmap(tmp_path):
    path = str(tmp_path / "legacy.pth")
    torch.save({"model": {"w": torch.arange(3.0)}}, path, _use_new_zipfile_serialization=False)
    for mmap in (False, True):
        assert torch.equal(load_checkpoint(path, mmap=mmap)["model"]["w"], torch.arange(3.0))


def test_find_resume_none_for_missing_or_empty_dir(tmp_path):
    assert find_resume_checkpoint(str(tmp_path / "missing")) is None
    (tmp_path / "ckpt_epoch_x.pth").write_bytes(b"")
    (tmp_path / ".ckpt_epoch_9.pth.abc.tmp").write_bytes(b"junk")
    assert find_resume_checkpoint(str(tmp_path)) is None


def test_find_resume_picks_highest_epoch_numerically(tmp_path):
    for epoch in (2, 9, 10):
        save_checkpoint(checkpoint_path(str(tmp_path), epoch), _state(epoch))
    assert find_resume_checkpoint(str(tmp_path)) == checkpoint_path(str(tmp_path), 10)


def test_find_resume_skips_truncated_newest_with_warning(tmp_path, caplog):
    for epoch in (0, 1, 2):
        save_checkpoint(checkpoint_path(str(tmp_path), epoch), _state(epoch))
    newest = checkpoint_path(str(tmp_path), 2)
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:
        f.write(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        found = find_resume_checkpoint(str(tmp_path))
    assert found == checkpoint_path(str(tmp_path), 1)
    assert load_checkpoint(found)["epoch"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ckpt_epoch_2.pth" in warnings[0]


def test_prune_keeps_last_k_and_best(tmp_path):
    d = str(tmp_path)
    for epoch in range(7):
        save_checkpoint(checkpoint_path(d, epoch), _state(epoch))
    best = checkpoint_path(d, 1)
    deleted = prune_checkpoints(d, keep_last=3, keep={best})
    assert sorted(deleted) == sorted(checkpoint_path(d, e) for e in (0, 2, 3))
    assert sorted(os.listdir(d)) == ["ckpt_epoch_1.pth", "ckpt_epoch_4.pth", "ckpt_epoch_5.pth", "ckpt_epoch_6.pth"]
    assert prune_checkpoints(d, keep_last=3, keep={best}) == []


def test_prune_never_deletes_newest_good_checkpoint(tmp_path):
    d = str(tmp_path)
    for epoch in range(4):
        save_checkpoint(checkpoint_path(d, epoch), _state(epoch))
    with open(checkpoint_path(d, 3), "wb") as f:
        f.write(b"truncated")
    prune_checkpoints(d, keep_last=1)
    assert sorted(os.listdir(d)) == ["ckpt_epoch_2.pth", "ckpt_epoch_3.pth"]
    assert find_resume_checkpoint(d) == checkpoint_path(d, 2)
    prune_checkpoints(d, keep_last=0)
    assert sorted(os.listdir(d)) == ["ckpt_epoch_2.pth"]


def _draws() -> list:
    return [
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.rand(3).tolist() + [np.random.randn()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    ]


def test_rng_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in python's and numpy's state
    np.random.randn()
    state = capture_rng_state()
    expected = _draws()
    path = str(tmp_path / "rng.pth")
    save_checkpoint(path, {"model": {}, "rng": [state]})
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    restore_rng_state(load_checkpoint(path)["rng"][0])
    got = _draws()
    for generator, (g, e) in zip(("python", "numpy", "torch"), zip(got, expected)):
        assert g == e, generator


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip_through_a_checkpoint(tmp_path):
    torch.cuda.manual_seed_all(5)
    torch.rand(3, device="cuda")  # advance the generator's offset
    state = capture_rng_state()
    assert len(state["cuda"]) == 1  # this process's device only
    expected = torch.rand(4, device="cuda")
    save_checkpoint(str(tmp_path / "rng.pth"), {"model": {}, "rng": [state]})
    torch.cuda.manual_seed_all(123)
    restore_rng_state(load_checkpoint(str(tmp_path / "rng.pth"))["rng"][0])
    assert torch.equal(torch.rand(4, device="cuda"), expected)


class _FakeCuda:
    """torch.cuda's RNG calls on a fake machine with 4 devices, this process bound to `device`."""

    def __init__(self, device: int) -> None:
        self.device, self.states, self.set_calls = device, {i: torch.full((8,), i, dtype=torch.uint8) for i in range(4)}, []

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.device)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: self.states[device].clone())
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: self.set_calls.append((device, s.clone())))


@pytest.mark.parametrize("device", [0, 2])
def test_each_rank_saves_and_restores_its_own_cuda_device_only(monkeypatch, device):
    fake = _FakeCuda(device)
    fake.install(monkeypatch)
    state = capture_rng_state()
    assert len(state["cuda"]) == 1 and torch.equal(state["cuda"][0], fake.states[device])
    restore_rng_state(state)
    assert len(fake.set_calls) == 1 and fake.set_calls[0][0] == device
    assert torch.equal(fake.set_calls[0][1], fake.states[device])
    # an older checkpoint held every visible device's state: only this rank's own is restored
    fake.set_calls.clear()
    restore_rng_state({**state, "cuda": [fake.states[i] for i in range(4)]})
    assert [(d, int(s[0])) for d, s in fake.set_calls] == [(device, device)]
