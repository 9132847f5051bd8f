"""A log line that cannot be written is dropped and counted; the thread that logged goes on."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import pytest

from shipper.log import SafeLogger, log_lines_dropped


def test_a_closed_pipe_drops_and_counts() -> None:
    """EPIPE (the reader of stdout is gone): every line is dropped and counted, none raises,
    from any thread."""
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "w") as out:
        logger = SafeLogger(out)
        before = log_lines_dropped()
        logger.info("first")
        t = threading.Thread(target=logger.error, args=("from a thread",))
        t.start()
        t.join()
        logger.warning("third")
        assert log_lines_dropped() - before == 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_a_full_disk_drops_and_counts() -> None:
    """ENOSPC: the line is dropped and counted, and the next write tries again."""
    with open("/dev/full", "w") as out:
        logger = SafeLogger(out)
        before = log_lines_dropped()
        logger.info("one")
        logger.info("two")
        assert log_lines_dropped() - before == 2


def test_a_closed_file_object_drops_and_counts() -> None:
    """A stdout closed inside the process (ValueError on write) counts the same."""
    out = io.StringIO()
    logger = SafeLogger(out)
    out.close()
    before = log_lines_dropped()
    logger.info("lost")
    assert log_lines_dropped() - before == 1


def test_no_stdout_at_all_drops_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Started with descriptor 1 closed, Python sets ``sys.stdout`` to None: every line is
    dropped and counted, none raises."""
    monkeypatch.setattr(sys, "stdout", None)
    logger = SafeLogger()
    before = log_lines_dropped()
    logger.info("lost")
    logger.error("lost too")
    assert log_lines_dropped() - before == 2


def test_lines_are_written_whole(tmp_path: Path) -> None:
    """A healthy file gets one line per call and nothing is counted."""
    path = tmp_path / "out.log"
    with path.open("w") as out:
        logger = SafeLogger(out)
        before = log_lines_dropped()
        for i in range(3):
            logger.info(f'{{"n": {i}}}')
        assert log_lines_dropped() == before
    assert path.read_text().splitlines() == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
