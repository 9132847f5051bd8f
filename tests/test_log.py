"""Logging: one JSON object per event on stdout, levels, and rate-limited warnings."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from shipper.log import RateLimiter, configure, get_logger
from tests.support.wait import wait_until


@pytest.fixture(name="restore_logging")
def fixture_restore_logging() -> Iterator[None]:
    """Put the session's quiet structlog setup back after a test that calls ``configure``."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """With ``json`` every event is one JSON object on its own stdout line, with its level,
    a UTC timestamp and its fields; below the level nothing is written."""
    configure("info", "json")
    log = get_logger(component="test")
    log.info("file_opened", path="/logs/app.log", offset=0)
    log.debug("too_detailed")
    log.warning("lines_dropped", reason="queue_full", count=3)
    out, err = capsys.readouterr()
    assert err == ""
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["event"] == "file_opened"
    assert (first["level"], first["path"], first["offset"], first["component"]) == (
        "info",
        "/logs/app.log",
        0,
        "test",
    )
    assert first["timestamp"].endswith("Z")
    assert (second["event"], second["level"], second["count"]) == ("lines_dropped", "warning", 3)


@pytest.mark.usefixtures("restore_logging")
def test_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    """With ``console`` an event is one readable line naming the event and its fields."""
    configure("debug", "console")
    get_logger().debug("stats", lines_read=5)
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert "stats" in out
    assert "lines_read=5" in out
    assert not out.startswith("{")


@pytest.mark.usefixtures("restore_logging")
def test_kafka_python_reports_only_critical_errors() -> None:
    """kafka-python's own logger is quieted: the sender reports connectivity itself."""
    configure("info", "json")
    assert logging.getLogger("kafka").getEffectiveLevel() == logging.CRITICAL


def test_rate_limiter_counts_what_it_held_back() -> None:
    """One event per key per interval goes through; the next one says how many were held
    back in between; other keys are independent."""
    limiter = RateLimiter(interval=1.0)
    assert limiter.allow("a") == 0
    assert limiter.allow("b") == 0
    held = 0

    def next_allowed() -> tuple[int] | None:
        nonlocal held
        got = limiter.allow("a")
        if got is None:
            held += 1
            return None
        return (got,)

    (reported,) = wait_until(next_allowed, 10, "the interval to pass")
    assert held >= 1
    assert reported == held
    assert limiter.allow("a") is None  # a new interval began


def test_rate_limited_warning() -> None:
    """``warn`` logs the first event of a key as a warning with ``suppressed=0`` and holds
    back repeats within the interval."""
    limiter = RateLimiter(interval=3600)
    log = get_logger()
    with capture_logs() as logs:
        for i in range(5):
            limiter.warn(log, "file_open_failed", key="file_open_failed:/a", path="/a", n=i)
        limiter.warn(log, "file_open_failed", key="file_open_failed:/b", path="/b", n=9)
    assert logs == [
        {
            "event": "file_open_failed",
            "log_level": "warning",
            "suppressed": 0,
            "path": "/a",
            "n": 0,
        },
        {
            "event": "file_open_failed",
            "log_level": "warning",
            "suppressed": 0,
            "path": "/b",
            "n": 9,
        },
    ]
