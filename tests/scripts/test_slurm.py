"""scripts/slurm.sh with stand-ins for srun, scontrol and scancel: the torchrun line it builds parses with the
installed torch's own torchrun parser, and a stop signal reaches the tasks and requeues the job."""
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
from torch.distributed.run import get_args_parser

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# srun: record its arguments (one per line), its pid, then wait for a stop signal (recorded) or 60 s
SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$LOG/srun.args"
echo $$ > "$LOG/srun.pid"
trap 'echo got-USR1 >> "$LOG/srun.signals"; exit 0' USR1
trap 'echo got-TERM >> "$LOG/srun.signals"; exit 0' TERM
for _ in $(seq 600); do sleep 0.1; done
"""
SCANCEL = """#!/usr/bin/env bash
echo "$@" >> "$LOG/scancel.args"
sig=${1#--signal=}
kill -"$sig" "$(cat "$LOG/srun.pid")"
"""
SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$LOG/scontrol.args"
[ "$1 $2" = "show hostnames" ] && echo node-a && echo node-b
exit 0
"""
# a Python whose torchrun lacks --signals-to-handle, as torch < 2.9
OLD_TORCH_PYTHON = f"""#!/usr/bin/env bash
if [ "$*" = "-m torch.distributed.run --help" ]; then
    "{sys.executable}" -m torch.distributed.run --help | grep -v -e signals.to.handle -e shutdown.timeout
else
    exec "{sys.executable}" "$@"
fi
"""


def _stub(path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _start(tmp_path, python: str):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("srun", SRUN), ("scancel", SCANCEL), ("scontrol", SCONTROL)):
        _stub(bin_dir / name, text)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", LOG=str(log), PYTHON=python,
               SLURM_JOB_NODELIST="node-[a-b]", SLURM_NNODES="2", SLURM_JOB_ID="4242", SLURM_CPUS_PER_TASK="64")
    proc = subprocess.Popen(["bash", "scripts/slurm.sh", "configs/swin_tiny.yaml", "/data/imagenet", "--tag", "t"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (log / "srun.pid").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    return proc, log


def _stop(proc: subprocess.Popen, log, signum: int, forwarded: str) -> None:
    """Signal the batch script as SLURM would; it must pass `forwarded` on to the tasks, requeue and exit 0."""
    try:
        proc.send_signal(signum)
        out = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert (log / "scancel.args").read_text().split() == [f"--signal={forwarded}", "4242"]
    assert (log / "srun.signals").read_text().split() == [f"got-{forwarded}"]
    assert "requeue 4242" in (log / "scontrol.args").read_text()


def _torchrun_args(srun_args: list[str]) -> list[str]:
    i = srun_args.index("scripts/launch.py")  # takes torchrun's arguments
    return srun_args[i + 1:]


@pytest.mark.parametrize("stop_with", [signal.SIGUSR1, signal.SIGTERM])
def test_torchrun_line_parses_and_a_stop_reaches_the_tasks_and_requeues(tmp_path, stop_with):
    proc, log = _start(tmp_path, sys.executable)
    srun_args = (log / "srun.args").read_text().splitlines()
    assert "--cpus-per-task=64" in srun_args and "--kill-on-bad-exit=1" in srun_args
    args = get_args_parser().parse_args(_torchrun_args(srun_args))
    assert (args.nnodes, args.nproc_per_node, args.rdzv_id, args.rdzv_endpoint) == ("2", "8", "4242", "node-a:29500")
    assert args.training_script == "main.py"
    assert args.training_script_args == ["--cfg", "configs/swin_tiny.yaml", "--data-path", "/data/imagenet",
                                         "--tag", "t"]
    assert "SIGUSR1" in args.signals_to_handle and args.shutdown_timeout == 120  # this torch has both
    _stop(proc, log, stop_with, "USR1")  # SLURM: USR1 before the time limit, TERM at preemption


def test_older_torchrun_gets_its_own_flags_and_term(tmp_path):
    python = tmp_path / "python-old-torch"
    _stub(python, OLD_TORCH_PYTHON)
    proc, log = _start(tmp_path, str(python))
    torchrun_args = _torchrun_args((log / "srun.args").read_text().splitlines())
    assert not any("signals" in a or "shutdown" in a for a in torchrun_args)
    assert get_args_parser().parse_args(torchrun_args).training_script == "main.py"
    _stop(proc, log, signal.SIGUSR1, "TERM")
