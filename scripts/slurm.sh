#!/usr/bin/env bash
# SLURM launch: one torchrun per node, 8 GPUs each; torchrun starts the per-GPU processes.
#
#   sbatch --nodes=2 scripts/slurm.sh configs/swin_base.yaml /data/imagenet [main.py arguments...]
#
# Two minutes before the time limit SLURM sends USR1 to this script, which forwards it to torchrun; every rank
# finishes its update, saves a mid-epoch checkpoint and exits 0, and the job requeues itself. The same command
# resumes from the run directory (TRAIN.AUTO_RESUME).
#SBATCH --job-name=swin
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -uo pipefail
CFG=${1:?usage: sbatch scripts/slurm.sh CONFIG DATA_PATH [main.py arguments...]}
DATA=${2:?usage: sbatch scripts/slurm.sh CONFIG DATA_PATH [main.py arguments...]}
shift 2
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=${GPUS_PER_NODE:-8}
srun --kill-on-bad-exit=1 python -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:29500" \
    --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout 120 \
    main.py --cfg "$CFG" --data-path "$DATA" "$@" &
SRUN=$!
preempted=0
# The batch shell would die on USR1; pass it on to every task instead and requeue once they have saved.
trap 'preempted=1; scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || kill -USR1 "$SRUN"' USR1
wait "$SRUN" || wait "$SRUN"
status=$?
if [ "$preempted" = 1 ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit $status
