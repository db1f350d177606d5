"""The device checks scripts/gpu_check.sh runs, one test each, under the `cuda` marker.

They run where GC_DEVICE names the device to check (gpu_check.sh sets it: cuda, or cpu with --dry-run) and are
skipped in the plain test suite. Their settings come from the environment gpu_check.sh exports: GC_DEVICE, GC_MODEL
(a scripts/benchmark.py architecture), GC_BATCH, OUT (where results go), NPROC; GC_RUNS (a folder for runs) and
GC_OPTS (a JSON list of config overrides) for the checks that launch main.py; GC_JPEGS for the uint8 check's folder.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from scripts import benchmark as B
from tests.helpers.processes import CLEAN_LAUNCH

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif("GC_DEVICE" not in os.environ, reason="device checks: run by scripts/gpu_check.sh")]


def _device_and_arch() -> tuple[torch.device, dict]:
    return torch.device(os.environ["GC_DEVICE"]), B.arch_of(os.environ["GC_MODEL"])


def _opts() -> list[str]:
    return json.loads(os.environ["GC_OPTS"])


def test_eval_after_training():
    """Train a few steps with the fused optimizers the engine uses, then evaluate: logits equal a fresh model's."""
    dev, arch = _device_and_arch()
    x = torch.randn(8, 3, arch["img_size"], arch["img_size"], device=dev)
    y = torch.randint(arch["num_classes"], (8,), device=dev)
    for name, make in (("AdamW fused", lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True)),
                       ("SGD fused", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True))):
        torch.manual_seed(0)
        model = B.build("ours", arch, dev, drop_path=0.0)
        opt = make(model.parameters())
        for epoch in range(3):
            model.train()
            for _ in range(3):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            model.eval()
            fresh = copy.deepcopy(model)
            for m in fresh.modules():  # no cache of any kind survives: rebuilt from the current weights
                if hasattr(m, "bias_cache"):
                    m.bias_cache.clear()
            with torch.no_grad():
                got, ref = model(x), fresh(x)
            diff = (got - ref).abs().max().item()
            print(f"{name} epoch {epoch}: eval logits max|diff| against a fresh model {diff:.2e}")
            assert diff <= 1e-5 * max(ref.abs().max().item(), 1.0), f"{name}: evaluation after training steps is stale"


def test_sdpa_kernels():
    """Our attention through each SDPA kernel against the eager path, same weights: logits and bias-table grads."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev, arch = _device_and_arch()
    torch.manual_seed(0)
    model = B.build("ours_eager", arch, dev, drop_path=0.0)  # no drop path: train-mode passes are deterministic
    x = torch.randn(8, 3, arch["img_size"], arch["img_size"], device=dev)
    y = torch.randint(arch["num_classes"], (8,), device=dev)
    table = model.layers[0].blocks[-1].attn.relative_position_bias_table  # a shifted block: bias + mask

    def run(impl, dtype, backend):
        model.set_attn_impl(impl)
        model.zero_grad(set_to_none=True)
        kernel = sdpa_kernel([backend]) if backend else contextlib.nullcontext()
        with kernel, torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model.train()
            out = model(x)
            F.cross_entropy(out.float(), y).backward()
            model.eval()
            with torch.no_grad():
                out_eval = model(x)  # the cached-bias path
        return out.float().detach(), table.grad.float().clone(), out_eval.float()

    report, ok = {}, True
    # tolerances relative to max |logits| and max |bias-table gradient|
    for dname, dtype, tol, gtol in (("fp32", None, 1e-3, 1e-2), ("bf16", torch.bfloat16, 0.1, 0.25)):
        ref = run("eager", dtype, None)
        scale = max(ref[0].abs().max().item(), 1.0)
        gscale = max(ref[1].abs().max().item(), 1e-12)
        for backend in ("DEFAULT", "MATH", "EFFICIENT_ATTENTION", "FLASH_ATTENTION", "CUDNN_ATTENTION"):
            try:
                got = run("sdpa", dtype, None if backend == "DEFAULT" else getattr(SDPBackend, backend))
            except RuntimeError as e:
                report[f"{dname} {backend}"] = "unavailable: " + str(e).strip().splitlines()[0][:100]
                continue
            d = [(a - b).abs().max().item() for a, b in zip(got, ref)]
            good = d[0] <= tol * scale and d[2] <= tol * scale and d[1] <= gtol * gscale
            ok &= good  # every kernel that runs our attention must match it
            report[f"{dname} {backend}"] = (
                f"logits max|diff| train {d[0]:.2e} eval {d[2]:.2e} (|logits| {scale:.2f}), "
                f"bias grad {d[1]:.2e} (|grad| {gscale:.2e}) {'ok' if good else 'MISMATCH'}")
    for k, v in report.items():
        print(f"{k:<28} {v}")
    fused = [k for k, v in report.items() if k.startswith("bf16") and "MATH" not in k and v.endswith(" ok")]
    print("bf16 fused kernels that ran and matched:", fused)
    with open(os.path.join(os.environ["OUT"], "sdpa_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    assert ok, "an SDPA kernel differs from the eager attention beyond the tolerances"
    assert fused or dev.type == "cpu", "no fused SDPA kernel ran our attention in bf16"


def test_uint8_input():
    """uint8 batches: normalization on the device equals the CPU's bit for bit; erasing runs there; JPEG folder
    (written to GC_JPEGS, which gpu_check.sh's uint8_main run then trains on)."""
    from configs import get_config
    from data import build_loaders

    root, dev = os.environ["GC_JPEGS"], torch.device(os.environ["GC_DEVICE"])
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in range(4):
            os.makedirs(f"{root}/{split}/c{c}", exist_ok=True)
            for i in range(n):
                img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60), Image.BICUBIC)
                img.save(f"{root}/{split}/c{c}/{i}.JPEG", quality=90)
    cfg = get_config(None, ["DATA.DATA_PATH", root, "MODEL.NUM_CLASSES", "4", "DATA.IMG_SIZE", "64",
                            "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0", "AUG.REPROB", "1.0"])
    loaders = build_loaders(cfg, 0, 1, dev)
    val = next(iter(loaders.val_loader))[0]
    on_dev = loaders.val_prepare(val.to(dev)).cpu()
    assert torch.equal(on_dev, loaders.val_prepare(val)), "normalization on the device differs from the CPU's"
    loaders.train_sampler.set_epoch(0)
    x = next(iter(loaders.train_loader))[0].to(dev)
    erased = loaders.train_prepare(x)
    changed = (erased != loaders.val_prepare(x)).any(dim=1).flatten(1).any(dim=1)
    assert erased.device.type == dev.type and torch.isfinite(erased).all() and bool(changed.all()), changed
    print(f"uint8 {tuple(val.shape)} -> {tuple(on_dev.shape)} float32: bitwise equal on {dev} and cpu; "
          f"every image of the training batch erased on {dev}")


def test_compile():
    """torch.compile of our model: logits against eager, and a timed bf16 training step compiled vs eager."""
    dev, arch = _device_and_arch()
    batch = int(os.environ["GC_BATCH"])
    torch.manual_seed(0)
    model = B.build("ours", arch, dev, drop_path=0.0).eval()
    x = torch.randn(batch, 3, arch["img_size"], arch["img_size"], device=dev)
    for mode in ("eval", "train"):  # graph breaks make compile fall back to eager, silently
        model.train(mode == "train")
        with torch.set_grad_enabled(mode == "train"):
            ex = torch._dynamo.explain(model)(x[:2])
        print(f"{mode}: {ex.graph_count} graphs, {ex.graph_break_count} graph breaks")
        for reason in ex.break_reasons[:3]:
            where = reason.user_stack[-1] if reason.user_stack else ""
            print("   ", str(reason.reason).splitlines()[0][:160], "|", str(where).strip()[:160])
        torch._dynamo.reset()
    model.eval()
    compiled = torch.compile(model)
    t = time.perf_counter()
    with torch.no_grad():
        ref, got = model(x), compiled(x)
    print(f"eval compile + first call {time.perf_counter() - t:.1f}s")
    diff, scale = (ref - got).abs().max().item(), ref.abs().max().item()
    print(f"fp32 logits max|diff| {diff:.2e} (|logits| {scale:.2f})")
    assert diff <= 1e-3 * max(scale, 1.0), "compiled logits differ from eager"
    torch.manual_seed(0)
    eager_train = B.build("ours", arch, dev)
    torch.manual_seed(0)
    compiled_train = B.build("ours_compiled", arch, dev)
    steps = {name: B.make_step(m, "train_bf16", arch, batch, dev) for name, m in
             (("eager", eager_train), ("compiled", compiled_train))}
    t = time.perf_counter()
    steps["compiled"]()
    B.synchronize(dev)
    print(f"train compile + first step {time.perf_counter() - t:.1f}s")
    timed = B.time_interleaved(steps, dev, warmup=2, iters=3, repeats=2)
    e, c = timed["eager"]["sec_per_iter"], timed["compiled"]["sec_per_iter"]
    print(f"bf16 train step, batch {batch}: eager {1e3 * e:.1f} ms, compiled {1e3 * c:.1f} ms ({e / c:.2f}x)")


def _run_dir(tag: str) -> str:
    return os.path.join(os.environ["GC_RUNS"], "gpu_check_tiny", tag)


def test_deterministic():
    """Two runs with TRAIN.DETERMINISTIC end bitwise equal; the option's cost in epoch time."""
    def run(tag, *extra):
        cmd = [sys.executable, "main.py", "--device", os.environ["GC_DEVICE"], "--output", os.environ["GC_RUNS"],
               "--tag", tag, "--opts", *_opts(), *extra]
        assert subprocess.run(cmd, timeout=600).returncode == 0, f"run {tag} failed"
        d = _run_dir(tag)
        epochs = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl")) if '"kind": "epoch"' in line]
        last = max(int(n.split("_")[2].split(".")[0]) for n in os.listdir(d) if n.startswith("ckpt_epoch_"))
        model = torch.load(os.path.join(d, f"ckpt_epoch_{last}.pth"), map_location="cpu", weights_only=True)["model"]
        return model, [e["epoch_s"] for e in epochs]

    a, a_s = run("det_a", "TRAIN.DETERMINISTIC", "True")
    b, b_s = run("det_b", "TRAIN.DETERMINISTIC", "True")
    _, d_s = run("det_default")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    print(f"epoch seconds, deterministic {a_s} and {b_s}, default {d_s} (the first epoch includes start-up)")
    print(f"last-epoch cost of TRAIN.DETERMINISTIC: {a_s[-1] / d_s[-1]:.2f}x")
    assert not differ, f"{len(differ)} tensors differ between two deterministic runs, e.g. {differ[:3]}"
    print("two TRAIN.DETERMINISTIC runs: every weight bitwise equal")


def test_preempt_resume():
    """SIGTERM to the launcher (scripts/launch.py: torchrun with a clean stop) mid-epoch, resume, final weights against
    an uninterrupted run."""
    dev, nproc = os.environ["GC_DEVICE"], os.environ["NPROC"]

    def launch(tag):
        cmd = [sys.executable, "scripts/launch.py", "--standalone", f"--nproc_per_node={nproc}", "main.py",
               "--device", dev, "--output", os.environ["GC_RUNS"], "--tag", tag, "--opts", *_opts()]
        return subprocess.Popen(cmd, start_new_session=True)

    def steps(tag):
        try:
            with open(os.path.join(_run_dir(tag), "metrics.jsonl")) as f:
                lines = [line for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []
        return [r["step"] for r in map(json.loads, lines) if r["kind"] == "step"]

    assert launch("full").wait(timeout=600) == 0, "the uninterrupted run failed"
    p = launch("cut")
    t0 = time.monotonic()
    while not [s for s in steps("cut") if s >= 3]:
        assert p.poll() is None and time.monotonic() - t0 < 300, "the run ended or stalled before update 3"
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    code = p.wait(timeout=300)
    print("SIGTERM to the launcher after update", max(steps("cut")), "; exit", code)
    assert code == 0 or not CLEAN_LAUNCH, "the ranks and the launcher exit 0 after a stop that saved"
    mid = glob.glob(os.path.join(_run_dir("cut"), "ckpt_epoch_*_step_*.pth"))
    assert mid, "no mid-epoch checkpoint after SIGTERM"
    print("mid-epoch checkpoint:", [os.path.basename(m) for m in mid])
    assert launch("cut").wait(timeout=600) == 0, "the resumed run failed"
    last = sorted(glob.glob(os.path.join(_run_dir("full"), "ckpt_epoch_*.pth")))[-1]
    a = torch.load(last, map_location="cpu", weights_only=True)["model"]
    b = torch.load(os.path.join(_run_dir("cut"), os.path.basename(last)), map_location="cpu",
                   weights_only=True)["model"]
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    scale = max(a[k].float().abs().max().item() for k in a)
    print(f"final weights, resumed vs uninterrupted: max|diff| {diff:.2e} (max|w| {scale:.2f})")
    if dev == "cpu":
        assert diff == 0, "a resumed CPU run must end bitwise equal to the uninterrupted one"
    assert diff <= 1e-3 * scale, "the resumed run drifted from the uninterrupted one beyond GPU nondeterminism"


def test_swinv2_sdpa():
    """SwinV2's fused attention (what it runs on CUDA) against its eager products on the device, same weights:
    logits and gradients in float32 and under bf16 autocast."""
    import models.swinv2 as swinv2

    dev = torch.device(os.environ["GC_DEVICE"])
    arch = B.arch_of("tiny_v2" if dev.type == "cpu" else "swinv2_tiny_patch4_window8_256")
    torch.manual_seed(0)
    model = B.build("ours", arch, dev, drop_path=0.0)
    x = torch.randn(4, 3, arch["img_size"], arch["img_size"], device=dev)
    y = torch.randint(arch["num_classes"], (4,), device=dev)
    real = swinv2.use_sdpa

    def run(fused, dtype):
        swinv2.use_sdpa = lambda t: fused
        try:
            model.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = model(x)
                F.cross_entropy(out.float(), y).backward()
        finally:
            swinv2.use_sdpa = real
        grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
        return out.float().detach(), grads

    for name, dtype, tol in (("fp32", None, 1e-3), ("bf16", torch.bfloat16, 0.1)):
        (eager, g_eager), (fused, g_fused) = run(False, dtype), run(True, dtype)
        d, g = (fused - eager).abs().max().item(), (g_fused - g_eager).abs().max().item()
        scale, gscale = max(eager.abs().max().item(), 1.0), max(g_eager.abs().max().item(), 1e-12)
        print(f"{name}: logits max|diff| {d:.2e} (|logits| {scale:.2f}), gradients {g:.2e} (|grad| {gscale:.2e})")
        assert d <= tol * scale and g <= 10 * tol * gscale, f"SwinV2 fused attention differs from eager in {name}"
