#!/usr/bin/env bash
# Quickstart: set up a fresh machine, then train and evaluate a small Swin on the real Fashion-MNIST.
#
#   bash scripts/quickstart.sh [extra main.py arguments, e.g. --opts TRAIN.EPOCHS 5]
#
# Environment: DATA_DIR (idx files; default: Debian's dataset-fashion-mnist location, else ./datasets),
# OUTPUT (default ./output), TAG (default quickstart), NPROC (default: all GPUs, else all CPU cores),
# CFG (default configs/fashion_mnist.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CFG=${CFG:-configs/fashion_mnist.yaml}
OUTPUT=${OUTPUT:-output}
DEBIAN_DIR=/usr/share/datasets/fashion-mnist

# 1. Python packages, only when something is missing (looked up, not imported: importing them takes seconds).
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
        torch torchvision timm yacs tensorboard matplotlib 2>/dev/null; then
    echo "== installing Python packages from requirements.txt"
    "$PY" -m pip install -r requirements.txt
fi

# 2. The data: Debian's package when we can install it, else torchvision's downloader.
has_idx() { compgen -G "$1/train-images-idx3-ubyte*" >/dev/null || compgen -G "$1/FashionMNIST/raw/train-images-idx3-ubyte*" >/dev/null; }
if [ -z "${DATA_DIR:-}" ]; then
    if ! has_idx "$DEBIAN_DIR" && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing Debian's dataset-fashion-mnist"
        apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y dataset-fashion-mnist >/dev/null; } || true
    fi
    if has_idx "$DEBIAN_DIR"; then DATA_DIR=$DEBIAN_DIR; else DATA_DIR=datasets; fi
fi
if ! has_idx "$DATA_DIR"; then
    echo "== downloading Fashion-MNIST into $DATA_DIR"
    "$PY" -c "import sys, torchvision; [torchvision.datasets.FashionMNIST(sys.argv[1], train=t, download=True) for t in (True, False)]" "$DATA_DIR"
fi

# 3. One process per GPU, else per CPU core (each with one thread).
if [ -z "${NPROC:-}" ]; then
    NPROC=$("$PY" -c "import torch; print(torch.cuda.device_count())")
    [ "$NPROC" -gt 0 ] || NPROC=$(nproc)
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# 4. Never overwrite a finished run: an unfinished one resumes, a finished one gets a new tag.
MODEL_NAME=$("$PY" main.py --cfg "$CFG" --print-config | sed -n 's/^  NAME: //p' | head -n 1)
TAG=${TAG:-quickstart}
BASE_TAG=$TAG; n=1
while [ -f "$OUTPUT/$MODEL_NAME/$TAG/eval.json" ]; do n=$((n + 1)); TAG="$BASE_TAG-$n"; done
[ "$TAG" = "$BASE_TAG" ] || echo "== $OUTPUT/$MODEL_NAME/$BASE_TAG holds a finished run; this one is $TAG"
RUN_DIR=$OUTPUT/$MODEL_NAME/$TAG

echo "== training on $NPROC process(es): $RUN_DIR"
start=$(date +%s)
# scripts/launch.py is torchrun that, on Ctrl-C, lets the ranks save and exits as they do (see its docstring)
"$PY" scripts/launch.py --standalone --nproc_per_node="$NPROC" main.py --cfg "$CFG" \
    --data-path "$DATA_DIR" --output "$OUTPUT" --tag "$TAG" "$@"
if [ ! -f "$RUN_DIR/eval.json" ]; then  # stopped (Ctrl-C) with a checkpoint to resume from
    echo "== stopped before the end: run the same command again to resume"
    exit 0
fi
"$PY" scripts/plot_metrics.py "$RUN_DIR" --out "$RUN_DIR/curves.png"
end=$(date +%s)

echo "== done in $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"
"$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"top-1 error {r['top1_err']:.2f}% (top-1 accuracy {r['top1_acc']:.2f}%) on {r['num_images']} test images\")" "$RUN_DIR/eval.json"
echo "eval.json:   $RUN_DIR/eval.json"
echo "report.md:   $RUN_DIR/report.md"
echo "curves:      $RUN_DIR/curves.png"
echo "TensorBoard: tensorboard --logdir $RUN_DIR"
