"""Training engine: distributed set-up, optimizer and schedule, training step, evaluation, checkpoints,
logging, reports. `engine.run(cfg) -> int` is the entry point main.py calls; `python -m engine.launch` is torchrun
with a clean stop on Ctrl-C (engine/launch.py)."""
from engine.run import run

__all__ = ["run"]
