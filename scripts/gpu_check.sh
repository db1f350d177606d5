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
#   (2b) swinv2_sdpa: SwinV2's fused attention (what it runs on CUDA) against its eager products, fp32 and bf16:
#       logits and gradients
#   (3) ddp_torchrun: torchrun main.py with one process per GPU (nccl; DDP, no_sync, the bucket all-reduce and the
#       stop agreement between peers when there are several): tiny synthetic run, 2 epochs, eval.json written
#   (4) preempt_resume: SIGTERM to the launcher (scripts/launch.py) part way through an epoch (exit 0), the same command
#       resumes from the mid-epoch checkpoint; final weights against an uninterrupted run (bitwise in the dry run
#       on CPU; on CUDA the max difference, bounded: cudnn.benchmark and atomic adds make GPU runs differ in the
#       last bits)
#   (4b) deterministic: two runs with TRAIN.DETERMINISTIC end bitwise equal; its cost in epoch time
#   (5) amp_bf16 / amp_fp16: main.py training under bf16 and under fp16 autocast (GradScaler), losses finite
#   (5b) sync_bn: MODEL.SYNC_BN (SyncBatchNorm) through torchrun on 2 or more GPUs, eval.json written
#   (6) uint8_input / uint8_main: DeviceNormalize on the GPU against the CPU (bitwise), RandomErasing on the GPU,
#       and main.py for one epoch on a tiny JPEG folder
#   (7) speed: scripts/benchmark.py for Swin-T, Swin-B and SwinV2-T side by side with timm and torchvision (JSON in
#       $OUT),
#       torch.compile of our model (logits against eager, a timed bf16 step), then, time allowing, the benchmark
#       with ours_compiled and the engine checks (engine_checks: tests/gpu/test_engine_checks.py, CUDA only)
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
CORRECTNESS=(eval_after_training sdpa_kernels swinv2_sdpa ddp_torchrun preempt_resume deterministic amp_bf16 amp_fp16
             sync_bn uint8_input uint8_main)

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

# the device checks are tests/gpu/test_gpu_checks.py (one test per step) and tests/gpu/test_engine_checks.py (pytest,
# marker cuda); eval_ok.py below checks
# what a main.py run wrote
PYTEST=(python -m pytest -q -s -p no:cacheprovider -m cuda)
GPU_TESTS=tests/gpu/test_gpu_checks.py
json_list() { python -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; }
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

export OUT

TINY=(MODEL.NAME gpu_check_tiny DATA.DATASET synthetic DATA.IMG_SIZE "$GC_IMG" DATA.BATCH_SIZE 32 DATA.NUM_WORKERS 2
      DATA.SYNTHETIC_TRAIN_SIZE 256 DATA.SYNTHETIC_VAL_SIZE 64 MODEL.NUM_CLASSES 10 MODEL.SWIN.EMBED_DIM 48
      MODEL.SWIN.DEPTHS "[2, 2]" MODEL.SWIN.NUM_HEADS "[3, 6]" MODEL.SWIN.WINDOW_SIZE 4)
export RUNS="$WORK/runs" WORK GC_RUNS="$WORK/runs" GC_JPEGS="$WORK/jpegs"
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
check eval_after_training 90 "${PYTEST[@]}" "$GPU_TESTS::test_eval_after_training"

# (2) SDPA kernels against eager attention
check sdpa_kernels 90 "${PYTEST[@]}" "$GPU_TESTS::test_sdpa_kernels"
check swinv2_sdpa 90 "${PYTEST[@]}" "$GPU_TESTS::test_swinv2_sdpa"

# (3) DDP through torchrun, one process per GPU (nccl), 2 epochs of a tiny synthetic run
if needs_yacs ddp_torchrun; then
  check ddp_torchrun 150 bash "$WORK/main_run.sh" ddp - torchrun "${TINY[@]}" TRAIN.EPOCHS 2 TRAIN.WARMUP_EPOCHS 1
  keep ddp
  grep -m 1 "NCCL version" "$OUT/ddp_torchrun.log" || echo "(no NCCL start-up line in ddp_torchrun.log)"
fi

# (4) preemption and resume through scripts/launch.py (torchrun with a clean stop)
if needs_yacs preempt_resume; then
  GC_OPTS=$(json_list "${TINY[@]}" DATA.SYNTHETIC_TRAIN_SIZE 512 TRAIN.EPOCHS 2 TRAIN.WARMUP_EPOCHS 1 PRINT_FREQ 1 \
    MODEL.DROP_PATH_RATE 0.1) check preempt_resume 240 "${PYTEST[@]}" "$GPU_TESTS::test_preempt_resume"
fi

# (4b) TRAIN.DETERMINISTIC: two runs bitwise equal, and what the option costs
if needs_yacs deterministic; then
  GC_OPTS=$(json_list "${TINY[@]}" TRAIN.EPOCHS 2 TRAIN.WARMUP_EPOCHS 1 MODEL.DROP_PATH_RATE 0.1) \
    check deterministic 240 "${PYTEST[@]}" "$GPU_TESTS::test_deterministic"
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
  check uint8_input 60 "${PYTEST[@]}" "$GPU_TESTS::test_uint8_input"
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
check compile 200 "${PYTEST[@]}" "$GPU_TESTS::test_compile"
if [ "$DRY" = 0 ]; then
  check benchmark_compiled 150 python scripts/benchmark.py "${BENCH[@]}" --model swin_tiny_patch4_window7_224 \
    --settings train_bf16 infer_bf16 --impls ours ours_compiled timm --compile --memory-model none \
    --json "$OUT/cuda-swin_tiny-compiled.json"
fi
if [ "$DRY" = 0 ] && [ $YACS = 1 ]; then
  check engine_checks 600 "${PYTEST[@]}" tests/gpu/test_engine_checks.py
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
