#!/usr/bin/env bash
# The one prepared check of every CUDA code path, for the few minutes a GPU machine is available:
#
#   bash scripts/gpu_check.sh              # on the GPU machine, from anywhere; results go to $OUT
#   bash scripts/gpu_check.sh --dry-run    # the same steps on CPU with tiny sizes (catches mistakes beforehand)
#
# Steps, each with its own time limit and one PASS/FAIL/SKIP line, later steps running whatever earlier ones did.
# The checks that can find wrong results come first, speed last:
#   (1) eval_after_training: a small Swin trained a few steps with fused AdamW and with fused SGD (what the engine
#       uses on CUDA), then evaluated: logits against a fresh copy of the same weights (no stale cached bias)
#   (2) sdpa_kernels: our attention through each SDPA kernel (math, efficient, flash, cudnn) and the default
#       dispatch against the eager path on the same weights, fp32 and bf16: logits (train and eval) and the
#       bias-table gradient asserted within stated tolerances for every kernel that runs
#   (3) ddp_torchrun: torchrun main.py with one process per GPU (nccl; DDP, no_sync, the bucket all-reduce and the
#       stop agreement between peers when there are several): tiny synthetic run, 2 epochs, eval.json written
#   (4) preempt_resume: SIGTERM to torchrun part way through an epoch, the same command resumes from the mid-epoch
#       checkpoint; final weights against an uninterrupted run (bitwise in the dry run on CPU; on CUDA the max
#       difference, bounded: cudnn.benchmark and atomic adds make GPU runs differ in the last bits)
#   (4b) deterministic: two runs with TRAIN.DETERMINISTIC end bitwise equal; its cost in epoch time
#   (5) amp_bf16 / amp_fp16: main.py training under bf16 and under fp16 autocast (GradScaler), losses finite
#   (5b) sync_bn: MODEL.SYNC_BN (SyncBatchNorm) through torchrun on 2 or more GPUs, eval.json written
#   (6) uint8_input / uint8_main: DeviceNormalize on the GPU against the CPU (bitwise), RandomErasing on the GPU,
#       and main.py for one epoch on a tiny JPEG folder
#   (7) speed: scripts/benchmark.py for Swin-T and Swin-B side by side with timm and torchvision (JSON in $OUT),
#       torch.compile of our model (logits against eager, a timed bf16 step), then, time allowing, the benchmark
#       with ours_compiled and tests/engine/gpu_engine_check.py
# Exit status: non-zero when a correctness step (1-6) failed or was skipped (the budget ran out before it), or
# a prerequisite (yacs, tensorboard) is missing. Every process a step starts is killed when the step ends.
# Needs: PyTorch with CUDA, timm, torchvision, tensorboard; yacs importable or a wheel in .device_wheels/.
# Environment: OUT (results folder, default benchmarks/gpu), GPU_CHECK_BUDGET (seconds for everything,
# default 450: steps that would not fit are skipped, so the whole run ends in time).
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-benchmarks/gpu}"
[ "$DRY" = 1 ] && OUT="${GPU_CHECK_DRY_OUT:-${TMPDIR:-/tmp}/gpu_check_dry}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # run directories (checkpoints) stay out of $OUT
BUDGET="${GPU_CHECK_BUDGET:-450}"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [ "$DRY" = 1 ]; then
  export GC_DEVICE=cpu GC_MODEL=tiny GC_BATCH=4 GC_IMG=32
  BENCH=(--device cpu --model tiny --batch 2 --iters 1 --repeats 1 --warmup 0 --memory-model tiny)
  MODELS=(tiny tiny_v2)
  NPROC=2  # gloo between two CPU processes: the same DDP paths
else
  export GC_DEVICE=cuda GC_MODEL=swin_tiny_patch4_window7_224 GC_BATCH=64 GC_IMG=64
  BENCH=(--device cuda --batch 128 --iters 5 --repeats 3 --warmup 3)
  MODELS=(swin_tiny_patch4_window7_224 swin_base_patch4_window7_224 swinv2_tiny_patch4_window8_256)
  NPROC=$(python -c "import torch; print(max(torch.cuda.device_count(), 1))" 2> /dev/null || echo 1)
fi
export NPROC
PASSED=() FAILED=() SKIPPED=() NOT_APPLICABLE=()
CORRECTNESS=(eval_after_training sdpa_kernels ddp_torchrun preempt_resume deterministic amp_bf16 amp_fp16 sync_bn
             uint8_input uint8_main)

# every process a step started: its command line names $WORK (scripts and run directories live there)
reap() { pkill -KILL -f -- "$WORK" 2> /dev/null; sleep 1; pkill -KILL -f -- "$WORK" 2> /dev/null; true; }
trap 'reap; rm -rf "$WORK"' EXIT

left() { echo $((BUDGET - SECONDS)); }

# check NAME LIMIT_S CMD...: run CMD with a time limit, its output in $OUT/NAME.log, one result line
check() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  if [ "$(left)" -lt 20 ]; then
    SKIPPED+=("$name"); echo "SKIP $name (budget of ${BUDGET}s used up)"; return 0
  fi
  [ "$limit" -gt "$(($(left) - 5))" ] && limit=$(($(left) - 5))
  echo "---- $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  reap  # torchrun starts its workers in their own sessions: timeout alone may leave them holding the GPU
  [ $rc -ne 0 ] && grep -n -m 8 "ERROR\|Error\|Traceback\|assert" "$OUT/$name.log"
  tail -n 15 "$OUT/$name.log"
  if [ $rc -eq 0 ]; then
    PASSED+=("$name"); echo "PASS $name ($((SECONDS - t0))s)"
  else
    FAILED+=("$name"); echo "FAIL $name (exit $rc$([ $rc -ge 124 ] && echo ', time limit'), $((SECONDS - t0))s)"
  fi
}

echo "==== gpu_check $(date -Is) dry_run=$DRY out=$OUT budget=${BUDGET}s"
git log -1 --format='commit %H %s' 2>/dev/null || true
command -v nvidia-smi > /dev/null && nvidia-smi || echo "(no nvidia-smi)"
PREREQ_OK=1
if ! python -c "import tensorboard" 2> /dev/null; then
  PREREQ_OK=0; echo "FAIL tensorboard: not importable (main.py needs it)"
fi
python -c "import sys, torch, timm, torchvision; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| cuda', torch.version.cuda, '| cudnn', torch.backends.cudnn.version(), '| timm', timm.__version__,
'| torchvision', torchvision.__version__, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"

# yacs (configs/ needs it): installed, else from the wheels the coordinator puts in .device_wheels/
YACS=1
if ! python -c "import yacs" 2> /dev/null; then
  if [ -d .device_wheels ]; then
    python -m pip install --no-index --find-links .device_wheels yacs > "$OUT/yacs_install.log" 2>&1 \
      || echo "pip install from .device_wheels failed (see yacs_install.log); trying PYTHONPATH"
    if ! python -c "import yacs" 2> /dev/null; then
      for p in .device_wheels/yacs-*.whl .device_wheels; do  # a pure-Python wheel imports from the zip itself
        [ -e "$p" ] && export PYTHONPATH="$PWD/$p${PYTHONPATH:+:$PYTHONPATH}"
      done
    fi
  fi
  python -c "import yacs" 2> /dev/null || YACS=0
fi
[ $YACS = 1 ] || PREREQ_OK=0
if [ $YACS = 1 ]; then
  python -c "import yacs; print('yacs', yacs.__file__)"
else
  echo "FAIL yacs: not importable and no usable wheel in .device_wheels/ (put yacs-*.whl there);" \
       "steps 1, 2, 3b and 6 (configs/, main.py) cannot run"
fi

# the python steps, written out first so that each runs under its own time limit
cat > "$WORK/eval_ok.py" << 'EOF'
"""argv: run directory, expected AMP dtype or '-': eval.json exists and every logged loss is finite."""
import json, math, os, sys
run, dtype = sys.argv[1], sys.argv[2]
ev = json.load(open(os.path.join(run, "eval.json")))
rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
losses = [r[k] for r in rows for k in ("loss", "train_loss", "val_loss") if k in r]
assert losses and all(math.isfinite(v) for v in losses), f"non-finite or missing losses: {losses}"
scales = [r["loss_scale"] for r in rows if "loss_scale" in r]
print(f"eval.json: {ev}\n{len(losses)} finite losses, last {losses[-1]:.4f}; loss scales {scales[-3:]}")
assert dtype == "-" or ev.get("amp_dtype", dtype) == dtype, f"amp_dtype {ev.get('amp_dtype')} != {dtype}"
EOF

cat > "$WORK/sdpa_check.py" << 'EOF'
"""Our attention through each SDPA kernel against the eager path, same weights: logits and bias-table grads."""
import contextlib, json, os, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
sys.path.insert(0, os.getcwd())
from scripts import benchmark as B

dev, arch = torch.device(os.environ["GC_DEVICE"]), B.arch_of(os.environ["GC_MODEL"])
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
        report[f"{dname} {backend}"] = (f"logits max|diff| train {d[0]:.2e} eval {d[2]:.2e} (|logits| {scale:.2f}), "
                                        f"bias grad {d[1]:.2e} (|grad| {gscale:.2e}) {'ok' if good else 'MISMATCH'}")
for k, v in report.items():
    print(f"{k:<28} {v}")
fused = [k for k, v in report.items() if k.startswith("bf16") and "MATH" not in k and v.endswith(" ok")]
print("bf16 fused kernels that ran and matched:", fused)
json.dump(report, open(os.path.join(os.environ["OUT"], "sdpa_check.json"), "w"), indent=1)
assert ok, "an SDPA kernel differs from the eager attention beyond the tolerances"
assert fused or dev.type == "cpu", "no fused SDPA kernel ran our attention in bf16"
EOF

cat > "$WORK/uint8_check.py" << 'EOF'
"""uint8 batches: normalization on the device equals the CPU's bit for bit; erasing runs there; JPEG folder."""
import os, sys
import numpy as np
import torch
from PIL import Image
sys.path.insert(0, os.getcwd())
from configs import get_config
from data import build_loaders

root, dev = sys.argv[1], torch.device(os.environ["GC_DEVICE"])
rng = np.random.default_rng(0)
for split, n in (("train", 8), ("val", 2)):
    for c in range(4):
        os.makedirs(f"{root}/{split}/c{c}", exist_ok=True)
        for i in range(n):
            img = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60), Image.BICUBIC)
            img.save(f"{root}/{split}/c{c}/{i}.JPEG", quality=90)
cfg = get_config(None, ["DATA.DATA_PATH", root, "MODEL.NUM_CLASSES", "4", "DATA.IMG_SIZE", "64",
                        "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0", "AUG.REPROB", "1.0"])
L = build_loaders(cfg, 0, 1, dev)
val = next(iter(L.val_loader))[0]
on_dev = L.val_prepare(val.to(dev)).cpu()
assert torch.equal(on_dev, L.val_prepare(val)), "normalization on the device differs from the CPU's"
L.train_sampler.set_epoch(0)
x = next(iter(L.train_loader))[0].to(dev)
erased = L.train_prepare(x)
changed = (erased != L.val_prepare(x)).any(dim=1).flatten(1).any(dim=1)
assert erased.device.type == dev.type and torch.isfinite(erased).all() and bool(changed.all()), changed
print(f"uint8 {tuple(val.shape)} -> {tuple(on_dev.shape)} float32: bitwise equal on {dev} and cpu; "
      f"every image of the training batch erased on {dev}")
EOF

cat > "$WORK/compile_check.py" << 'EOF'
"""torch.compile of our model: logits against eager, and a timed bf16 training step compiled vs eager."""
import os, sys, time
import torch
sys.path.insert(0, os.getcwd())
from scripts import benchmark as B

dev, arch = torch.device(os.environ["GC_DEVICE"]), B.arch_of(os.environ["GC_MODEL"])
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
EOF

cat > "$WORK/eval_after_training.py" << 'EOF'
"""Train a few steps with the fused optimizers the engine uses, then evaluate: logits equal a fresh model's."""
import copy, os, sys
import torch
import torch.nn.functional as F
sys.path.insert(0, os.getcwd())
from scripts import benchmark as B

dev, arch = torch.device(os.environ["GC_DEVICE"]), B.arch_of(os.environ["GC_MODEL"])
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
EOF

cat > "$WORK/determinism_check.py" << 'EOF'
"""argv: runs folder, OPTS...: two runs with TRAIN.DETERMINISTIC end bitwise equal; the option's cost in epoch time."""
import json, os, subprocess, sys
import torch

runs, opts = sys.argv[1], sys.argv[2:]

def run(tag, *extra):
    cmd = [sys.executable, "main.py", "--device", os.environ["GC_DEVICE"], "--output", runs, "--tag", tag,
           "--opts", *opts, *extra]
    assert subprocess.run(cmd, timeout=600).returncode == 0, f"run {tag} failed"
    d = os.path.join(runs, "gpu_check_tiny", tag)
    epochs = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if '"kind": "epoch"' in l]
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
EOF

cat > "$WORK/preempt_check.py" << 'EOF'
"""argv: runs folder, OPTS...: SIGTERM to torchrun mid-epoch, resume, final weights against an uninterrupted run."""
import glob, json, os, signal, subprocess, sys, time
import torch

runs, opts = sys.argv[1], sys.argv[2:]
dev, nproc = os.environ["GC_DEVICE"], os.environ["NPROC"]

def launch(tag):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "main.py",
           "--device", dev, "--output", runs, "--tag", tag, "--opts", *opts]
    return subprocess.Popen(cmd, start_new_session=True)

def run_dir(tag):
    return os.path.join(runs, "gpu_check_tiny", tag)

def steps(tag):
    try:
        with open(os.path.join(run_dir(tag), "metrics.jsonl")) as f:
            lines = [l for l in f if l.endswith("\n")]
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
print("SIGTERM to torchrun after update", max(steps("cut")), "; exit", p.wait(timeout=300))
mid = glob.glob(os.path.join(run_dir("cut"), "ckpt_epoch_*_step_*.pth"))
assert mid, "no mid-epoch checkpoint after SIGTERM"
print("mid-epoch checkpoint:", [os.path.basename(m) for m in mid])
assert launch("cut").wait(timeout=600) == 0, "the resumed run failed"
last = sorted(glob.glob(os.path.join(run_dir("full"), "ckpt_epoch_*.pth")))[-1]
a = torch.load(last, map_location="cpu", weights_only=True)["model"]
b = torch.load(os.path.join(run_dir("cut"), os.path.basename(last)), map_location="cpu", weights_only=True)["model"]
diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
scale = max(a[k].float().abs().max().item() for k in a)
print(f"final weights, resumed vs uninterrupted: max|diff| {diff:.2e} (max|w| {scale:.2f})")
if dev == "cpu":
    assert diff == 0, "a resumed CPU run must end bitwise equal to the uninterrupted one"
assert diff <= 1e-3 * scale, "the resumed run drifted from the uninterrupted one beyond GPU nondeterminism"
EOF
export OUT

TINY=(MODEL.NAME gpu_check_tiny DATA.DATASET synthetic DATA.IMG_SIZE "$GC_IMG" DATA.BATCH_SIZE 32 DATA.NUM_WORKERS 2
      DATA.SYNTHETIC_TRAIN_SIZE 256 DATA.SYNTHETIC_VAL_SIZE 64 MODEL.NUM_CLASSES 10 MODEL.SWIN.EMBED_DIM 48
      MODEL.SWIN.DEPTHS "[2, 2]" MODEL.SWIN.NUM_HEADS "[3, 6]" MODEL.SWIN.WINDOW_SIZE 4)
export RUNS="$WORK/runs" WORK
cat > "$WORK/main_run.sh" << 'EOF'
# TAG DTYPE LAUNCHER(python|torchrun) OPTS...: main.py on $GC_DEVICE, then the eval.json / finite-loss check
tag=$1 dtype=$2 launcher=(python)
[ "$3" = torchrun ] && launcher=(env NCCL_DEBUG=INFO python -m torch.distributed.run --standalone
                                 --nproc_per_node="$NPROC")
shift 3
"${launcher[@]}" main.py --device "$GC_DEVICE" --output "$RUNS" --tag "$tag" --opts "$@" \
  && python "$WORK/eval_ok.py" "$RUNS/${RUN_MODEL:-gpu_check_tiny}/$tag" "$dtype"
EOF
keep() {  # the small result files of a run (not its checkpoints) into $OUT/runs/TAG
  mkdir -p "$OUT/runs/$1"
  cp "$RUNS/gpu_check_tiny/$1"/{eval.json,metrics.jsonl,log.txt} "$OUT/runs/$1/" 2> /dev/null || true
}
needs_yacs() {  # NAME: skip a step that needs configs/ when yacs is missing
  [ $YACS = 1 ] && return 0
  SKIPPED+=("$1"); echo "SKIP $1 (needs yacs)"; return 1
}

# (1) evaluation after fused optimizer steps
check eval_after_training 90 python "$WORK/eval_after_training.py"

# (2) SDPA kernels against eager attention
check sdpa_kernels 90 python "$WORK/sdpa_check.py"

# (3) DDP through torchrun, one process per GPU (nccl), 2 epochs of a tiny synthetic run
if needs_yacs ddp_torchrun; then
  check ddp_torchrun 150 bash "$WORK/main_run.sh" ddp - torchrun "${TINY[@]}" TRAIN.EPOCHS 2 TRAIN.WARMUP_EPOCHS 1
  keep ddp
  grep -m 1 "NCCL version" "$OUT/ddp_torchrun.log" || echo "(no NCCL start-up line in ddp_torchrun.log)"
fi

# (4) preemption and resume through torchrun
if needs_yacs preempt_resume; then
  check preempt_resume 240 python "$WORK/preempt_check.py" "$RUNS" "${TINY[@]}" DATA.SYNTHETIC_TRAIN_SIZE 512 \
    TRAIN.EPOCHS 2 TRAIN.WARMUP_EPOCHS 1 PRINT_FREQ 1 MODEL.DROP_PATH_RATE 0.1
fi

# (4b) TRAIN.DETERMINISTIC: two runs bitwise equal, and what the option costs
if needs_yacs deterministic; then
  check deterministic 240 python "$WORK/determinism_check.py" "$RUNS" "${TINY[@]}" TRAIN.EPOCHS 2 \
    TRAIN.WARMUP_EPOCHS 1 MODEL.DROP_PATH_RATE 0.1
fi

# (5) mixed precision through the engine: bf16, and fp16 with its GradScaler
if needs_yacs amp_bf16; then
  check amp_bf16 120 bash "$WORK/main_run.sh" amp_bf16 bfloat16 python "${TINY[@]}" TRAIN.EPOCHS 1 \
    TRAIN.WARMUP_EPOCHS 0 AMP_DTYPE bfloat16
  keep amp_bf16
fi
if [ "$DRY" = 1 ]; then
  NOT_APPLICABLE+=(amp_fp16); echo "N/A amp_fp16 (float16 autocast needs CUDA; the engine refuses it on CPU)"
elif needs_yacs amp_fp16; then
  check amp_fp16 120 bash "$WORK/main_run.sh" amp_fp16 float16 python "${TINY[@]}" TRAIN.EPOCHS 1 \
    TRAIN.WARMUP_EPOCHS 0 AMP_DTYPE float16
  keep amp_fp16
fi

# (5b) MODEL.SYNC_BN: a timm ResNet with SyncBatchNorm through torchrun, one process per GPU
if [ "$DRY" = 1 ] || [ "$NPROC" -lt 2 ]; then
  NOT_APPLICABLE+=(sync_bn)
  echo "N/A sync_bn (SyncBatchNorm runs on CUDA only and needs 2 or more GPUs; here $NPROC process(es) on $GC_DEVICE)"
elif needs_yacs sync_bn; then
  RUN_MODEL=test_resnet check sync_bn 150 bash "$WORK/main_run.sh" sync_bn - torchrun "${TINY[@]}" MODEL.TYPE timm \
    MODEL.NAME test_resnet MODEL.SYNC_BN True TRAIN.EPOCHS 1 TRAIN.WARMUP_EPOCHS 0
fi

# (6) uint8 batches through the device-side normalization and a short main.py run on JPEGs
if needs_yacs uint8_input; then  # the run reads the folder uint8_input writes
  check uint8_input 60 python "$WORK/uint8_check.py" "$WORK/jpegs"
fi
if [ -d "$WORK/jpegs/val" ]; then
  check uint8_main 90 bash "$WORK/main_run.sh" uint8 - python DATA.DATASET imagenet DATA.DATA_PATH "$WORK/jpegs" \
    MODEL.NAME gpu_check_tiny DATA.IMG_SIZE 64 DATA.BATCH_SIZE 8 DATA.NUM_WORKERS 2 MODEL.NUM_CLASSES 4 \
    MODEL.SWIN.EMBED_DIM 48 \
    MODEL.SWIN.DEPTHS "[2, 2]" MODEL.SWIN.NUM_HEADS "[3, 6]" MODEL.SWIN.WINDOW_SIZE 4 TRAIN.EPOCHS 1 \
    TRAIN.WARMUP_EPOCHS 0 AUG.REPROB 0.5
  keep uint8
else
  SKIPPED+=(uint8_main); echo "SKIP uint8_main (needs the JPEG folder of uint8_input)"
fi

# (7) speed: the side-by-side benchmark, torch.compile, and what time allows
for m in "${MODELS[@]}"; do
  check "benchmark_${m}" 180 python scripts/benchmark.py "${BENCH[@]}" --model "$m" \
    --json "$OUT/${GC_DEVICE}-${m}.json"
done
check compile 200 python "$WORK/compile_check.py"
if [ "$DRY" = 0 ]; then
  check benchmark_compiled 150 python scripts/benchmark.py "${BENCH[@]}" --model swin_tiny_patch4_window7_224 \
    --settings train_bf16 infer_bf16 --impls ours ours_compiled timm --compile --memory-model none \
    --json "$OUT/cuda-swin_tiny-compiled.json"
fi
if [ "$DRY" = 0 ] && [ $YACS = 1 ] && [ -f tests/engine/gpu_engine_check.py ]; then
  check engine_checks 600 python tests/engine/gpu_engine_check.py "$WORK/engine"
fi

MISSED=()  # correctness steps that failed or never ran
for c in "${CORRECTNESS[@]}"; do
  [[ " ${PASSED[*]:-} ${NOT_APPLICABLE[*]:-} " == *" $c "* ]] || MISSED+=("$c")
done
echo "==== ${#PASSED[@]} passed: ${PASSED[*]:-}"
echo "==== ${#FAILED[@]} failed: ${FAILED[*]:-}"
echo "==== ${#SKIPPED[@]} skipped: ${SKIPPED[*]:-}"
echo "==== ${#NOT_APPLICABLE[@]} not applicable here: ${NOT_APPLICABLE[*]:-}"
echo "==== correctness steps not passed: ${MISSED[*]:-none}"
echo "==== total ${SECONDS}s; results in $OUT"
[ ${#FAILED[@]} -eq 0 ] && [ ${#MISSED[@]} -eq 0 ] && [ "$PREREQ_OK" = 1 ]
