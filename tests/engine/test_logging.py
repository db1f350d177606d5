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
