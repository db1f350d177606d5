#!/usr/bin/env bash
# SLURM launch: one launcher (torchrun) per node, 8 GPUs each; it starts the per-GPU processes.
#
#   sbatch --nodes=2 scripts/slurm.sh configs/swin_base.yaml /data/imagenet [main.py arguments...]
#
# Two minutes before the time limit SLURM sends USR1 to this script; at preemption (or scancel) it sends TERM.
# The script passes either on to every rank; every rank finishes its update, rank 0 saves a mid-epoch
# checkpoint within seconds (a signal during evaluation ends it early), the ranks exit 0, and the job requeues
# itself.
# The same command resumes from the run directory (TRAIN.AUTO_RESUME). Keep the --signal margin (120 s here)
# above one update plus one checkpoint save; on a preemptible partition set the cluster's GraceTime likewise.
#
# Environment: GPUS_PER_NODE (default 8), MASTER_PORT (rendezvous port on the first node, default 29500).
# Multi-node: the rendezvous (c10d, MASTER_PORT) and the stop agreement between ranks (a gloo group beside
# NCCL) use TCP between the nodes: set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME) to an interface the nodes
# reach each other on when the default route's is not one.
#SBATCH --job-name=swin
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%j.out
set -uo pipefail
CFG=${1:?usage: sbatch scripts/slurm.sh CONFIG DATA_PATH [main.py arguments...]}
DATA=${2:?usage: sbatch scripts/slurm.sh CONFIG DATA_PATH [main.py arguments...]}
shift 2
PY=${PYTHON:-python}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
GPUS=${GPUS_PER_NODE:-8}
# The launcher passes USR1 on to the ranks only from torch 2.9 on; older ones take TERM (and give the ranks
# 30 s before killing them), so that is what this script sends them.
STOP_SIGNAL=TERM
TORCHRUN_EXTRA=()
if "$PY" -m torch.distributed.run --help 2>/dev/null | grep -q -- --signals-to-handle; then
    STOP_SIGNAL=USR1
    TORCHRUN_EXTRA=(--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout 120)
fi
# srun does not inherit --cpus-per-task from sbatch (Slurm >= 22.05): without it a step may get one CPU for
# every rank and its loader workers
# scripts/launch.py is torchrun that passes the stop signal on to the ranks and waits for their save without a time
# limit (see its docstring); with torch < 2.9 it is plain torchrun
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" "$PY" scripts/launch.py \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS" \
    --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$HEAD:${MASTER_PORT:-29500}" \
    ${TORCHRUN_EXTRA[@]+"${TORCHRUN_EXTRA[@]}"} \
    main.py --cfg "$CFG" --data-path "$DATA" "$@" &
SRUN=$!
preempted=0
# The batch shell would die on USR1 or TERM: pass the stop on to every task instead and requeue once they
# have saved.
stop() {
    preempted=1
    scancel --signal="$STOP_SIGNAL" "$SLURM_JOB_ID" 2>/dev/null || kill -"$STOP_SIGNAL" "$SRUN"
}
trap stop USR1 TERM
status=129
while [ "$status" -gt 128 ]; do  # a trapped signal ends `wait` early (status > 128): wait for the tasks again
    wait "$SRUN"
    status=$?
    [ "$preempted" = 1 ] || break
done
if [ "$preempted" = 1 ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit $status
