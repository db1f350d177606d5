#!/usr/bin/env bash
# Preemption soak: train a tiny run once without interruption, then again under stop signals at random moments
# (restarting the same command after every stop, as a requeued job does) and check that the final weights, EMA
# weights and optimizer state are bitwise equal. Prints the numbers and PASS or FAIL (exit code 0 or 1).
#
#   scripts/soak.sh                                                          # 5-10 minutes on 2 CPU cores
#   SOAK_EPOCHS=2 SOAK_TRAIN_SIZE=2048 SOAK_MIN_WAIT=8 SOAK_MAX_WAIT=20 scripts/soak.sh   # about 3 minutes
#
# Settings (environment, defaults in brackets):
#   SOAK_PROCS [2]          processes: >1 runs torchrun (gloo), 1 runs python main.py
#   SOAK_EPOCHS [8]         epochs of the run
#   SOAK_TRAIN_SIZE [12288] synthetic training images (an epoch is SIZE / PROCS / 4 micro-batches per rank)
#   SOAK_WORKERS [1]        DataLoader workers per process (signalled too when every process is)
#   SOAK_MIN_WAIT [4]       seconds from a start to its signal, drawn uniformly from [MIN, MAX]; a draw
#   SOAK_MAX_WAIT [60]      longer than the rest of the run lets that start finish
#   SOAK_MAX_STARTS [100]   give up (FAIL) after this many starts
#   SOAK_SEED [random]      seed of the random waits and choices, printed so that a failure can be replayed
#   SOAK_DIR [new temp dir] where the runs and their logs go (kept)
# Each stop is, at random, SIGTERM to the launcher only (torchrun forwards it to its workers), or SIGTERM or
# SIGUSR1 to every process of the job, as SLURM signals every process of a job step.
set -uo pipefail
cd "$(dirname "$0")/.."

PROCS=${SOAK_PROCS:-2}
EPOCHS=${SOAK_EPOCHS:-8}
TRAIN_SIZE=${SOAK_TRAIN_SIZE:-12288}
WORKERS=${SOAK_WORKERS:-1}
MIN_WAIT=${SOAK_MIN_WAIT:-4}
MAX_WAIT=${SOAK_MAX_WAIT:-60}
MAX_STARTS=${SOAK_MAX_STARTS:-100}
SEED=${SOAK_SEED:-$RANDOM}
DIR=${SOAK_DIR:-$(mktemp -d /tmp/soak.XXXXXX)}
RANDOM=$SEED
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$DIR"

OPTS=(MODEL.NAME soak_tiny MODEL.SWIN.EMBED_DIM 16 MODEL.SWIN.DEPTHS "[1, 1]" MODEL.SWIN.NUM_HEADS "[1, 2]" MODEL.SWIN.WINDOW_SIZE 4
      MODEL.SWIN.PATCH_SIZE 2 DATA.IMG_SIZE 32 MODEL.NUM_CLASSES 10 DATA.DATASET synthetic
      DATA.SYNTHETIC_TRAIN_SIZE "$TRAIN_SIZE" DATA.SYNTHETIC_VAL_SIZE 64 DATA.BATCH_SIZE 4
      DATA.NUM_WORKERS "$WORKERS" TRAIN.EPOCHS "$EPOCHS" TRAIN.WARMUP_EPOCHS 1 TRAIN.ACCUMULATION_STEPS 2
      MODEL.DROP_PATH_RATE 0.1 MODEL_EMA.ENABLE True MODEL_EMA.DECAY 0.99 PRINT_FREQ 10 DEVICE cpu TAG soak)

train() {  # output root: replace this (sub)shell by the training command, so that $! is the launcher's pid
    if [ "$PROCS" -gt 1 ]; then
        exec python -m torch.distributed.run --standalone --nproc_per_node="$PROCS" main.py --output "$1" \
            --opts "${OPTS[@]}"
    fi
    exec python main.py --output "$1" --opts "${OPTS[@]}"
}

descendants() {  # pid -> every process below it (torchrun's workers, their DataLoader workers)
    local child
    for child in $(pgrep -P "$1"); do echo "$child"; descendants "$child"; done
}

alive() {  # pids... -> success while any of them runs
    local p
    for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done
    return 1
}

echo "soak: procs $PROCS, epochs $EPOCHS, $TRAIN_SIZE images, workers $WORKERS, waits ${MIN_WAIT}-${MAX_WAIT} s," \
     "seed $SEED, dir $DIR"
start_s=$SECONDS
if ! (train "$DIR/baseline") > "$DIR/baseline.log" 2>&1; then
    echo "FAIL: the uninterrupted run failed: $DIR/baseline.log"; exit 1
fi
baseline_s=$((SECONDS - start_s))
echo "uninterrupted run: ${baseline_s} s"

starts=0 stops=0 mid_epoch=0 at_boundary=0 early=0 slowest=0
while :; do
    starts=$((starts + 1))
    [ "$starts" -le "$MAX_STARTS" ] || { echo "FAIL: not finished after $MAX_STARTS starts"; exit 1; }
    log="$DIR/start_$starts.log"
    train "$DIR/preempted" > "$log" 2>&1 &
    pid=$!
    wait_s=$((MIN_WAIT + RANDOM % (MAX_WAIT - MIN_WAIT + 1)))
    for _ in $(seq $((wait_s * 10))); do alive "$pid" || break; sleep 0.1; done
    if ! alive "$pid"; then
        wait "$pid"; code=$?
        [ "$code" -eq 0 ] || { echo "FAIL: start $starts exited $code without a signal: $log"; exit 1; }
        echo "start $starts: finished after ${wait_s} s or less"
        break
    fi
    case $((RANDOM % 3)) in
        0) sig=TERM; target="the launcher only" ;;
        1) sig=TERM; target="every process" ;;
        *) sig=USR1; target="every process" ;;
    esac
    mapfile -t below < <(descendants "$pid")
    sent=$SECONDS
    if [ "$target" = "every process" ]; then targets=("$pid" "${below[@]}"); else targets=("$pid"); fi
    kill -s "$sig" "${targets[@]}" 2>/dev/null
    wait "$pid" 2>/dev/null; code=$?  # (bash would report a launcher killed by SIGUSR1)
    while alive "${below[@]}"; do sleep 0.1; done  # a job step ends when its last process does
    took=$((SECONDS - sent)); [ "$took" -gt "$slowest" ] && slowest=$took
    stops=$((stops + 1))
    if grep -q "part way through epoch" "$log"; then mid_epoch=$((mid_epoch + 1)); how="saved mid-epoch"
    elif grep -q "Stopping on" "$log"; then at_boundary=$((at_boundary + 1)); how="saved after an epoch"
    elif grep -q "eval.json" "$log"; then how="had already finished training"
    else early=$((early + 1)); how="stopped before training started (nothing to save)"; fi
    if grep -q "forcefully exiting via SIGKILL" "$log"; then
        echo "FAIL: a worker did not stop within torchrun's grace period: $log"; exit 1
    fi
    if [ "$PROCS" -eq 1 ] && [ "$how" != "${how#saved}" ] && [ "$code" -ne 0 ]; then
        echo "FAIL: start $starts saved but exited $code: $log"; exit 1
    fi
    echo "start $starts: SIG$sig to $target after ${wait_s} s -> launcher exit $code, all stopped in ${took} s, $how"
    [ "$how" = "had already finished training" ] && break
done

last="soak_tiny/soak/ckpt_epoch_$((EPOCHS - 1)).pth"
python - "$DIR/baseline/$last" "$DIR/preempted/$last" <<'EOF'
import sys

import torch


def tensors(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["model"].items()}
    out.update({f"ema.{k}": v for k, v in ckpt["ema"].items()})
    for i, state in ckpt["optimizer"]["state"].items():
        out.update({f"optimizer.{i}.{k}": v for k, v in state.items() if torch.is_tensor(v)})
    return out, ckpt["global_step"]


(a, step_a), (b, step_b) = tensors(sys.argv[1]), tensors(sys.argv[2])
differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
worst = max((float((a[k].double() - b[k].double()).abs().max()) for k in differ if k in b), default=0.0)
print(f"compared {len(a)} tensors after {step_a} / {step_b} updates: {len(differ)} differ, max |diff| {worst:g}")
sys.exit(1 if differ or step_a != step_b or a.keys() != b.keys() else 0)
EOF
same=$?
echo "starts $starts, signals $stops (mid-epoch saves $mid_epoch, epoch-end saves $at_boundary, before training" \
     "$early), slowest stop ${slowest} s, total $((SECONDS - start_s)) s, uninterrupted run ${baseline_s} s"
if [ "$same" -eq 0 ]; then echo PASS; else echo "FAIL: the final weights differ from the uninterrupted run ($DIR)"; fi
exit "$same"
