#!/usr/bin/env bash
# SLURM launch: one torchrun per node, 8 GPUs each; torchrun starts the per-GPU processes.
#
#   sbatch --nodes=2 scripts/slurm.sh configs/swin_base.yaml /data/imagenet [main.py arguments...]
#
# A preempted or timed-out job resumes from its run directory when submitted again (TRAIN.AUTO_RESUME).
#SBATCH --job-name=swin
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=B:USR1@120
#SBATCH --output=slurm-%j.out
set -euo pipefail
CFG=${1:?usage: sbatch scripts/slurm.sh CONFIG DATA_PATH [main.py arguments...]}
DATA=${2:?usage: sbatch scripts/slurm.sh CONFIG DATA_PATH [main.py arguments...]}
shift 2
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=${GPUS_PER_NODE:-8}
srun --kill-on-bad-exit=1 python -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:29500" \
    main.py --cfg "$CFG" --data-path "$DATA" "$@"
