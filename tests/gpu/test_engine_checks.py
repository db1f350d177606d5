"""CUDA checks of the engine, scripts/gpu_check.sh's engine_checks step, under the `cuda` marker.

train_one_epoch on CUDA tensors: no host syncs per update (bf16 + fused AdamW + EMA + accumulation, and fp16 +
GradScaler), a non-finite update skipped on the device; main.py end to end on CUDA: training (bf16, EMA,
accumulation), fp16, eval-only from the bf16 checkpoint, throughput, TRAIN.COMPILE, torchrun with nccl.
Skipped unless GC_DEVICE is cuda. Run directories go to GC_RUNS/engine and each run's stdout and stderr to
OUT/engine/TAG.out.txt (a temporary folder when GC_RUNS or OUT is unset).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from typing import NamedTuple

import pytest
import torch

_DEVICE = os.environ.get("GC_DEVICE")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(_DEVICE is None, reason="device checks: run by scripts/gpu_check.sh"),
              pytest.mark.skipif(_DEVICE is not None and _DEVICE.split(":")[0] != "cuda",
                                 reason=f"CUDA only (bf16/fp16 autocast, fused AdamW, GradScaler and nccl on CUDA); "
                                        f"GC_DEVICE is {_DEVICE}")]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(REPO, "main.py")
TINY = ["MODEL.NAME", "swin_tiny_test",
        "MODEL.SWIN.EMBED_DIM", "32", "MODEL.SWIN.DEPTHS", "[2, 2]", "MODEL.SWIN.NUM_HEADS", "[2, 4]",
        "MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.SWIN.PATCH_SIZE", "2", "DATA.IMG_SIZE", "32", "MODEL.NUM_CLASSES", "10"]
SYN = ["DATA.DATASET", "synthetic", "DATA.NUM_WORKERS", "4", "PRINT_FREQ", "5"]
T224 = ["DATA.BATCH_SIZE", "64", "DATA.SYNTHETIC_TRAIN_SIZE", "1024", "DATA.SYNTHETIC_VAL_SIZE", "500",
        "MODEL.NUM_CLASSES", "1000"]


def _syncs_in_epoch(dtype: torch.dtype, updates: int, nan_batch: int | None = None):
    """Host syncs in one train_one_epoch of 2 * `updates` micro-batches (after a warm-up epoch), its stats, and the
    largest weight change."""
    from timm.utils import ModelEmaV3

    import models
    from configs import get_config
    from engine.amp import AmpPolicy
    from engine.optim import LRSchedule
    from engine.train import TrainContext, TrainState, train_one_epoch

    cfg = get_config(None, TINY + ["MODEL.DROP_PATH_RATE", "0.1"])
    dev = torch.device("cuda")
    model = models.build_model(cfg, dev).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    amp = AmpPolicy(True, dtype, "cuda")
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 3, 32, 32, generator=g).to(dev), torch.randint(10, (16,), generator=g).to(dev))
               for _ in range(updates * 2)]
    if nan_batch is not None:
        batches[nan_batch][0].fill_(float("nan"))
    ema = ModelEmaV3(model, decay=0.99)
    ctx = TrainContext(optimizer=opt, schedule=LRSchedule("cosine", 1e-3, 1e-6, 1e-5, total_steps=100, warmup_steps=5),
                       criterion=torch.nn.CrossEntropyLoss(), amp=amp, device=dev, ema_source=model,
                       accumulation_steps=2, clip_grad=5.0, scaler=amp.make_scaler(), ema=ema, print_freq=0)
    train_one_epoch(model, batches[:4], ctx, TrainState())  # warm-up (allocations, cuBLAS handles)
    torch.cuda.synchronize()
    before = [p.detach().clone() for p in model.parameters()]
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stats = train_one_epoch(model, batches, ctx, TrainState())
    finally:
        torch.cuda.set_sync_debug_mode(0)
    n = sum("synchroniz" in str(w.message) for w in caught)
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    return n, stats, moved


def test_no_host_syncs_bf16():
    """bf16 + fused AdamW + EMA + accumulation: as many host syncs for 16 updates as for 4 (epoch-end reads only)."""
    few, _, _ = _syncs_in_epoch(torch.bfloat16, 4)
    many, stats, moved = _syncs_in_epoch(torch.bfloat16, 16)
    assert few == many, f"{few} syncs for 4 updates but {many} for 16: something syncs per update"
    assert stats.skipped == 0 and moved > 0, (stats, moved)
    print(f"{many} syncs per epoch (epoch-end reads only)")


def test_no_host_syncs_fp16():
    """fp16 + GradScaler: as many host syncs for 16 updates as for 4."""
    few, _, _ = _syncs_in_epoch(torch.float16, 4)
    many, stats, _ = _syncs_in_epoch(torch.float16, 16)
    assert few == many, f"{few} syncs for 4 updates but {many} for 16"
    print(f"{many} syncs per epoch, {stats.skipped} overflow skips")


def test_nonfinite_update_skipped():
    """A NaN micro-batch (bf16, fused AdamW): its update is skipped on the device, exactly one skip counted."""
    _, stats, _ = _syncs_in_epoch(torch.bfloat16, 4, nan_batch=2)
    assert stats.skipped == 1, stats
    print(f"skipped={stats.skipped}")


class Dirs(NamedTuple):
    runs: str
    logs: str


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> Dirs:
    runs = os.path.join(os.environ.get("GC_RUNS") or str(tmp_path_factory.mktemp("runs")), "engine")
    logs = os.path.join(os.environ["OUT"], "engine") if os.environ.get("OUT") else runs
    os.makedirs(runs, exist_ok=True)
    os.makedirs(logs, exist_ok=True)
    return Dirs(runs, logs)


def _main(dirs: Dirs, tag: str, *opts: str, torchrun: int = 0, timeout: int = 240) -> dict:
    """main.py (through torchrun with `torchrun` processes when given) on GC_DEVICE; eval.json of the run (empty when
    absent) with _seconds and _run_dir added. Its stdout and stderr go to LOGS/TAG.out.txt."""
    cmd = [sys.executable, MAIN, "--device", os.environ["GC_DEVICE"], "--output", dirs.runs, "--tag", tag,
           "--opts", *opts]
    if torchrun:
        cmd[1:1] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    with open(os.path.join(dirs.logs, f"{tag}.out.txt"), "w") as f:
        f.write(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = opts[opts.index("MODEL.NAME") + 1] if "MODEL.NAME" in opts else "swin_tiny_patch4_window7_224"
    mode = "eval" if "EVAL_MODE" in opts else "throughput" if "THROUGHPUT_MODE" in opts else ""
    run_dir = os.path.join(dirs.runs, name, tag, mode)  # eval-only and throughput runs write into a folder of the run
    ev = os.path.join(run_dir, "eval.json")
    record = json.load(open(ev)) if os.path.exists(ev) else {}
    record["_seconds"] = round(time.perf_counter() - t, 1)
    record["_run_dir"] = run_dir
    return record


@pytest.fixture(scope="module")
def bf16_run(dirs: Dirs) -> dict:
    """main.py Swin-T 224 under bf16 with EMA and accumulation 2, 2 epochs, run once for the tests that use it."""
    return _main(dirs, "bf16", *SYN, *T224, "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1", "MODEL_EMA.ENABLE",
                 "True", "TRAIN.ACCUMULATION_STEPS", "2")


def test_main_bf16(bf16_run: dict):
    """main.py Swin-T 224 bf16, EMA, accumulation 2, 2 epochs: evaluated on the 500 validation images in bf16."""
    r = bf16_run
    assert r.get("num_images") == 500 and r.get("amp_dtype") == "bfloat16", r
    steps = [json.loads(x) for x in open(os.path.join(r["_run_dir"], "metrics.jsonl")) if '"step"' in x]
    print(f"{r['_seconds']}s, last img/s {steps[-2].get('img_per_s', 0):.0f}, mem {steps[-2].get('mem_mb', 0):.0f}MB")


def test_main_fp16(dirs: Dirs):
    """main.py fp16 + GradScaler, 1 epoch."""
    r = _main(dirs, "fp16", *SYN, *T224, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "AMP_DTYPE", "float16")
    assert r.get("amp_dtype") == "float16", r
    print(f"{r['_seconds']}s")


def test_main_eval_only(dirs: Dirs, bf16_run: dict):
    """main.py eval-only from the bf16 run's epoch-1 checkpoint."""
    ck = os.path.join(bf16_run["_run_dir"], "ckpt_epoch_1.pth")
    r = _main(dirs, "eval", *SYN, *T224, "EVAL_MODE", "True", "MODEL.RESUME", ck)
    assert "top1_acc" in r and "num_images" in r, r
    print(f"top1 {r['top1_acc']:.2f} on {r['num_images']}")


def test_main_throughput(dirs: Dirs):
    """main.py throughput mode, Swin-T batch 64."""
    r = _main(dirs, "speed", *SYN, *T224, "THROUGHPUT_MODE", "True")
    rec = json.loads(open(os.path.join(r["_run_dir"], "metrics.jsonl")).readline())
    print(f"{rec['img_per_s']:.0f} img/s ({rec['dtype']}, batch {rec['batch_size']}, {rec['device']})")


def test_main_compile(dirs: Dirs):
    """main.py TRAIN.COMPILE, tiny model, 1 epoch."""
    r = _main(dirs, "compile", *SYN, *TINY, "DATA.BATCH_SIZE", "32", "DATA.SYNTHETIC_TRAIN_SIZE", "256",
              "DATA.SYNTHETIC_VAL_SIZE", "64", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
              "TRAIN.COMPILE", "True", timeout=300)
    print(f"{r['_seconds']}s")


def test_torchrun_nccl(dirs: Dirs):
    """torchrun with one process (nccl process group), tiny model, 1 epoch."""
    r = _main(dirs, "nccl", *SYN, *TINY, "DATA.BATCH_SIZE", "32", "DATA.SYNTHETIC_TRAIN_SIZE", "128",
              "DATA.SYNTHETIC_VAL_SIZE", "64", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", torchrun=1)
    print(f"{r['_seconds']}s")
