"""scripts/quickstart.sh end to end on a few hundred generated Fashion-MNIST-format images (2 processes), beside a
finished run it must not overwrite."""
import gzip
import json
import os
import subprocess

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_idx(path: str, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion_mnist(root: str, n_train: int, n_test: int) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):  # a class-dependent bright bar, so the data are learnable
            images[i, 2 * y + 2: 2 * y + 6, 4:24] = 250
        _write_idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"), images)
        _write_idx(os.path.join(root, f"{split}-labels-idx1-ubyte.gz"), labels)


def test_quickstart_trains_evaluates_and_never_overwrites(tmp_path):
    data, out = tmp_path / "fmnist", tmp_path / "output"
    data.mkdir()
    _fake_fashion_mnist(str(data), n_train=256, n_test=70)
    env = dict(os.environ, DATA_DIR=str(data), OUTPUT=str(out), NPROC="2")
    opts = ["--opts", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.TIME_BUDGET", "0", "DATA.BATCH_SIZE", "32",
            "MODEL.SWIN.EMBED_DIM", "16", "MODEL.SWIN.DEPTHS", "[2, 2]", "MODEL.SWIN.NUM_HEADS", "[1, 2]", "PRINT_FREQ", "2"]
    run_root = out / "swin_fmnist_patch2_window7_28"
    finished = run_root / "quickstart"  # a finished run of the default tag: the quickstart must leave it alone
    finished.mkdir(parents=True)
    (finished / "eval.json").write_text('{"top1_err": 1.0}')
    proc = subprocess.run(["bash", "scripts/quickstart.sh", *opts], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "holds a finished run; this one is quickstart-2" in proc.stdout
    run_dir = run_root / "quickstart-2"
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["num_images"] == 70 and record["dataset"] == "fashion_mnist" and record["world_size"] == 2
    assert 0.0 <= record["top1_err"] <= 100.0
    assert (run_dir / "curves.png").stat().st_size > 0 and (run_dir / "report.md").exists()
    assert str(run_dir / "eval.json") in proc.stdout and f"top-1 error {record['top1_err']:.2f}%" in proc.stdout
    assert sorted(p.name for p in finished.iterdir()) == ["eval.json"]  # the finished run was left as it was
    assert sorted(p.name for p in run_root.iterdir()) == ["quickstart", "quickstart-2"]
