"""End to end through main.py (CPU, gloo): exact resume after SIGKILL, a truncated newest checkpoint, evaluation
identical for 1 and 2 processes, and malicious pickles refused by --resume / --eval / --pretrained."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers.processes import (REPO, assert_bitwise_equal, descendants, env, run, run_all,
                                     write_malicious_checkpoint)

TIMEOUT = 300
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills process trees via /proc")

CONFIG = """\
DATA:
  IMG_SIZE: 32
  BATCH_SIZE: 4
  NUM_WORKERS: 0
MODEL:
  NAME: swin_micro
  NUM_CLASSES: 3
  DROP_PATH_RATE: 0.1
  SWIN:
    EMBED_DIM: 8
    DEPTHS: [1, 1]
    NUM_HEADS: [1, 2]
    WINDOW_SIZE: 4
MODEL_EMA:
  ENABLE: True
  DECAY: 0.9
TRAIN:
  EPOCHS: 4
  WARMUP_EPOCHS: 1
  BASE_LR: 0.05
AMP_ENABLE: False
PRINT_FREQ: 1
DEVICE: cpu
"""


def _write_dataset(root: str) -> None:
    """ImageNet layout: 3 classes, 6 training images each, 19 validation images (7 + 6 + 6)."""
    rng = np.random.default_rng(0)
    for split, counts in (("train", (6, 6, 6)), ("val", (7, 6, 6))):
        for cls, n in zip(("n01", "n02", "n03"), counts):
            os.makedirs(os.path.join(root, split, cls))
            for i in range(n):
                pixels = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, cls, f"{i}.png"))


class Job:
    """Paths and command lines of one tiny experiment."""

    def __init__(self, root) -> None:
        self.root = str(root)
        self.data = os.path.join(self.root, "data")
        self.cfg = os.path.join(self.root, "tiny.yaml")
        _write_dataset(self.data)
        with open(self.cfg, "w") as f:
            f.write(CONFIG)

    def cmd(self, output: str, *extra: str, procs: int = 2) -> list[str]:
        launch = [sys.executable, "main.py"]
        if procs > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                      "main.py"]
        return launch + ["--cfg", self.cfg, "--data-path", self.data, "--output", output, "--tag", "t", *extra]

    @staticmethod
    def run_dir(output: str) -> str:
        return os.path.join(output, "swin_micro", "t")


def _run_and_kill_after(cmd: list[str], marker: str) -> str:
    """Start cmd and SIGKILL it with every process it started as soon as a line containing `marker` appears."""
    p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if marker in line:
                for pid in descendants(p.pid) + [p.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
        lines.append(p.stdout.read())
    finally:
        p.wait(timeout=TIMEOUT)
    out = "".join(lines)
    assert p.returncode == -signal.SIGKILL, f"the run ended before {marker!r} appeared:\n{out[-3000:]}"
    return out


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Job:
    return Job(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def baseline(job) -> str:
    """An uninterrupted 4-epoch 2-process run; returns its output root."""
    output = os.path.join(job.root, "baseline")
    r = run(job.cmd(output))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" not in r.stdout
    return output


def test_sigkill_then_rerun_resumes_bitwise_exact(job, baseline):
    output = os.path.join(job.root, "killed")
    ckpt1 = os.path.join(Job.run_dir(output), "ckpt_epoch_1.pth")
    _run_and_kill_after(job.cmd(output), f"saved {ckpt1}")
    r = run(job.cmd(output))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    resumed = [line for line in r.stdout.splitlines() if "resumed from" in line]
    assert len(resumed) == 1 and "ckpt_epoch_" in resumed[0] and "ckpt_epoch_3" not in resumed[0], resumed
    assert_bitwise_equal(os.path.join(Job.run_dir(output), "ckpt_epoch_3.pth"),
                         os.path.join(Job.run_dir(baseline), "ckpt_epoch_3.pth"))


def test_truncated_newest_checkpoint_is_skipped(job, baseline):
    output = os.path.join(job.root, "truncated")
    shutil.copytree(baseline, output)
    newest = os.path.join(Job.run_dir(output), "ckpt_epoch_3.pth")
    size = os.path.getsize(newest)
    with open(newest, "r+b") as f:
        f.truncate(size // 2)
    r = run(job.cmd(output))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "WARNING Skipping unreadable checkpoint" in log and "ckpt_epoch_3.pth is truncated" in log
    assert f"resumed from {os.path.join(Job.run_dir(output), 'ckpt_epoch_2.pth')}" in log
    assert_bitwise_equal(newest, os.path.join(Job.run_dir(baseline), "ckpt_epoch_3.pth"))


def test_eval_is_identical_for_one_and_two_processes(job, baseline):
    ckpt = os.path.join(Job.run_dir(baseline), "ckpt_epoch_3.pth")
    outputs = [os.path.join(job.root, f"eval{n}") for n in (1, 2)]
    for code, out in run_all([job.cmd(o, "--eval", "--resume", ckpt, procs=n) for o, n in zip(outputs, (1, 2))]):
        assert code == 0, out[-3000:]
    one, two = (json.load(open(os.path.join(Job.run_dir(o), "eval", "eval.json"))) for o in outputs)
    assert one["num_images"] == two["num_images"] == 19
    assert one["world_size"] == 1 and two["world_size"] == 2
    for key in ("correct1", "correct5", "top1_acc", "top1_err", "top5_acc", "top5_err"):
        assert one[key] == two[key], key
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-6)  # float32 logits of other batch shapes
    assert one["checkpoint"] == ckpt
    with open(os.path.join(Job.run_dir(baseline), "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f if '"kind": "epoch"' in line][-1]
    assert last["epoch"] == 3 and last["top1_acc"] == one["top1_acc"]


def test_malicious_pickle_is_refused_everywhere(job, tmp_path):
    marker = tmp_path / "PWNED"
    evil = str(tmp_path / "evil.pth")
    write_malicious_checkpoint(evil, marker)
    cmds = [job.cmd(str(tmp_path / name), *flags, procs=1) for name, flags in (
        ("resume", ["--resume", evil]), ("eval", ["--eval", "--resume", evil]), ("pretrained", ["--pretrained", evil]))]
    for (code, out), cmd in zip(run_all(cmds), cmds):
        assert code != 0, cmd
        assert evil in out, out[-3000:]
    assert not marker.exists()
