"""What reaches the console: rank 0 shows progress and job-wide warnings, other ranks only their own warnings;
the resolved config goes to log.txt alone."""
import logging
import os

import pytest

from engine.logging_utils import FILE_ONLY, ONCE_PER_JOB, close_logging, setup_logging

log = logging.getLogger("tests.console")


@pytest.mark.parametrize("rank", [0, 1])
def test_console_and_file_by_rank(tmp_path, capsys, rank):
    setup_logging(str(tmp_path), rank)
    try:
        log.info("progress line")
        log.info("config dump", extra=FILE_ONLY)
        log.warning("a warning every rank gives alike", extra=ONCE_PER_JOB)
        log.warning("a warning of this rank's own")
    finally:
        close_logging()
    out = capsys.readouterr().out
    assert "config dump" not in out and "a warning of this rank's own" in out
    assert ("progress line" in out) == ("a warning every rank gives alike" in out) == (rank == 0)
    if rank == 0:
        text = open(os.path.join(tmp_path, "log.txt")).read()
        assert "config dump" in text and "progress line" in text
    else:
        assert "[rank 1]" in out and not os.path.exists(os.path.join(tmp_path, "log.txt"))


def test_a_resumed_run_keeps_one_events_file_holding_each_step_once(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.logging_utils import MetricsWriter

    run_dir = str(tmp_path)
    with MetricsWriter(run_dir, True) as metrics:
        for step in range(1, 6):
            metrics.write({"kind": "step", "step": step, "loss": float(step)})
    with MetricsWriter(run_dir, True, resume_step=3) as metrics:  # steps 4 and 5 are trained again
        for step in (4, 5):
            metrics.write({"kind": "step", "step": step, "loss": 10.0 * step})
    files = [n for n in os.listdir(run_dir) if n.startswith("events.out.tfevents.")]
    assert len(files) == 1, files
    events = EventAccumulator(os.path.join(run_dir, files[0]))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("step/loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                                                         (5, 50.0)]
