"""CUDA checks of the engine (run on a GPU machine: `python tests/engine/gpu_engine_check.py OUT_DIR`).

Not collected by pytest (CPU-only suite). Checks: no host syncs between log lines (bf16 + fused AdamW, and
fp16 + GradScaler), skip of a non-finite update on the device, and end-to-end runs of main.py on CUDA:
training (bf16, EMA, accumulation), fp16, torch.compile, eval-only, throughput, torchrun with nccl.
Prints one PASS/FAIL line per check; exit code 1 if any failed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from engine.amp import AmpPolicy  # noqa: E402
from engine.optim import LRSchedule  # noqa: E402
from engine.train import TrainContext, TrainState, train_one_epoch  # noqa: E402

TINY = ["MODEL.NAME", "swin_tiny_test",
        "MODEL.SWIN.EMBED_DIM", "32", "MODEL.SWIN.DEPTHS", "[2, 2]", "MODEL.SWIN.NUM_HEADS", "[2, 4]",
        "MODEL.SWIN.WINDOW_SIZE", "4", "MODEL.SWIN.PATCH_SIZE", "2", "DATA.IMG_SIZE", "32", "MODEL.NUM_CLASSES", "10"]
SYN = ["DATA.DATASET", "synthetic", "DATA.NUM_WORKERS", "4", "PRINT_FREQ", "5"]
RESULTS: list[tuple[str, bool, str]] = []


def check(name: str):
    def wrap(fn):
        t = time.perf_counter()
        try:
            detail = fn() or ""
            RESULTS.append((name, True, detail))
        except Exception as e:  # report every check, keep going
            traceback.print_exc()
            RESULTS.append((name, False, f"{type(e).__name__}: {e}"))
        print(f"{'PASS' if RESULTS[-1][1] else 'FAIL'} {name} ({time.perf_counter() - t:.1f}s) {RESULTS[-1][2]}",
              flush=True)
        return fn
    return wrap


def _syncs_in_epoch(dtype: torch.dtype, updates: int, nan_batch: int | None = None) -> tuple[int, TrainState, float]:
    import models
    from configs import get_config

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
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=0.99)
    ctx = TrainContext(optimizer=opt, schedule=LRSchedule("cosine", 1e-3, 1e-6, 1e-5, total_steps=100, warmup_steps=5),
                       criterion=torch.nn.CrossEntropyLoss(), amp=amp, device=dev, ema_source=model,
                       accumulation_steps=2, clip_grad=5.0, scaler=amp.make_scaler(), ema=ema, print_freq=0)
    train_one_epoch(model, batches[:4], ctx, TrainState())  # warm-up (allocations, cuBLAS handles)
    torch.cuda.synchronize()
    state = TrainState()
    before = [p.detach().clone() for p in model.parameters()]
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = train_one_epoch(model, batches, ctx, state)
    torch.cuda.set_sync_debug_mode(0)
    n = sum("synchroniz" in str(w.message) for w in caught)
    moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    return n, stats, moved


# Until models/__init__.py exports count_params/count_flops (engine/report.py uses them), main.py runs
# through this shim; once the export exists the shim changes nothing.
_SHIM = """import runpy, sys
sys.path.insert(0, {repo!r})
import models, models.flops
for name in ("count_params", "count_flops"):
    if not hasattr(models, name):
        setattr(models, name, getattr(models.flops, name))
sys.argv[0] = {main!r}
runpy.run_path({main!r}, run_name="__main__")
"""


def _entry(out: str) -> str:
    path = os.path.join(out, "main_shim.py")
    with open(path, "w") as f:
        f.write(_SHIM.format(repo=REPO, main=os.path.join(REPO, "main.py")))
    return path


def _main(out: str, tag: str, *opts: str, torchrun: int = 0, timeout: int = 240) -> dict:
    cmd = [sys.executable, _entry(out), "--output", out, "--tag", tag, "--opts", *opts]
    if torchrun:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}", _entry(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    with open(os.path.join(out, f"{tag}.out.txt"), "w") as f:
        f.write(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name = opts[opts.index("MODEL.NAME") + 1] if "MODEL.NAME" in opts else "swin_tiny_patch4_window7_224"
    mode = "eval" if "EVAL_MODE" in opts else "throughput" if "THROUGHPUT_MODE" in opts else ""
    run_dir = os.path.join(out, name, tag, mode)  # eval-only and throughput runs write into a folder of the run
    ev = os.path.join(run_dir, "eval.json")
    record = json.load(open(ev)) if os.path.exists(ev) else {}
    record["_seconds"] = round(time.perf_counter() - t, 1)
    record["_run_dir"] = run_dir
    return record


def unit_checks() -> None:
    """train_one_epoch on CUDA tensors, no data loader."""

    @check("no per-update host syncs: bf16 + fused AdamW + EMA + accumulation")
    def _():
        few, _, _ = _syncs_in_epoch(torch.bfloat16, 4)
        many, stats, moved = _syncs_in_epoch(torch.bfloat16, 16)
        assert few == many, f"{few} syncs for 4 updates but {many} for 16: something syncs per update"
        assert stats.skipped == 0 and moved > 0
        return f"{many} syncs per epoch (epoch-end reads only)"


    @check("no per-update host syncs: fp16 + GradScaler")
    def _():
        few, _, _ = _syncs_in_epoch(torch.float16, 4)
        many, stats, _ = _syncs_in_epoch(torch.float16, 16)
        assert few == many, f"{few} syncs for 4 updates but {many} for 16"
        return f"{many} syncs per epoch, {stats.skipped} overflow skips"


    @check("non-finite update skipped on the device (bf16 fused AdamW)")
    def _():
        _, stats, _ = _syncs_in_epoch(torch.bfloat16, 4, nan_batch=2)
        assert stats.skipped == 1, stats
        return f"skipped={stats.skipped}"


def main(out: str) -> int:
    os.makedirs(out, exist_ok=True)
    unit_checks()
    t224 = ["DATA.BATCH_SIZE", "64", "DATA.SYNTHETIC_TRAIN_SIZE", "1024", "DATA.SYNTHETIC_VAL_SIZE", "500",
            "MODEL.NUM_CLASSES", "1000"]

    @check("main.py Swin-T 224 bf16, EMA, ACC 2, 2 epochs")
    def _():
        r = _main(out, "bf16", *SYN, *t224, "TRAIN.EPOCHS", "2", "TRAIN.WARMUP_EPOCHS", "1", "MODEL_EMA.ENABLE",
                  "True", "TRAIN.ACCUMULATION_STEPS", "2")
        assert r["num_images"] == 500 and r["amp_dtype"] == "bfloat16", r
        steps = [json.loads(x) for x in open(os.path.join(r["_run_dir"], "metrics.jsonl")) if '"step"' in x]
        return f"{r['_seconds']}s, last img/s {steps[-2].get('img_per_s', 0):.0f}, mem {steps[-2].get('mem_mb', 0):.0f}MB"

    @check("main.py fp16 + GradScaler, 1 epoch")
    def _():
        r = _main(out, "fp16", *SYN, *t224, "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "AMP_DTYPE", "float16")
        assert r["amp_dtype"] == "float16"
        return f"{r['_seconds']}s"

    @check("main.py eval-only from the bf16 checkpoint")
    def _():
        ck = os.path.join(out, "swin_tiny_patch4_window7_224", "bf16", "ckpt_epoch_1.pth")
        r = _main(out, "eval", *SYN, *t224, "EVAL_MODE", "True", "MODEL.RESUME", ck)
        return f"top1 {r['top1_acc']:.2f} on {r['num_images']}"

    @check("main.py throughput Swin-T batch 64")
    def _():
        r = _main(out, "speed", *SYN, *t224, "THROUGHPUT_MODE", "True")
        rec = json.loads(open(os.path.join(r["_run_dir"], "metrics.jsonl")).readline())
        return f"{rec['img_per_s']:.0f} img/s ({rec['dtype']}, batch {rec['batch_size']}, {rec['device']})"

    @check("main.py TRAIN.COMPILE tiny model, 1 epoch")
    def _():
        r = _main(out, "compile", *SYN, *TINY, "DATA.BATCH_SIZE", "32", "DATA.SYNTHETIC_TRAIN_SIZE", "256",
                  "DATA.SYNTHETIC_VAL_SIZE", "64", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0",
                  "TRAIN.COMPILE", "True", timeout=300)
        return f"{r['_seconds']}s"

    @check("torchrun nproc 1 (nccl process group)")
    def _():
        r = _main(out, "nccl", *SYN, *TINY, "DATA.BATCH_SIZE", "32", "DATA.SYNTHETIC_TRAIN_SIZE", "128",
                  "DATA.SYNTHETIC_VAL_SIZE", "64", "TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", torchrun=1)
        return f"{r['_seconds']}s"

    failed = [n for n, ok, _ in RESULTS if not ok]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out"))
