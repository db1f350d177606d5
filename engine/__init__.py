"""Training engine: distributed set-up, optimizer and schedule, training step, evaluation, checkpoints,
logging, reports. `engine.run(cfg) -> int` is the entry point main.py calls."""
from engine.run import run

__all__ = ["run"]
