"""structlog setup (JSON or console to stdout) and a rate limiter for repeated warnings.

Writing a log line never fails: when stdout is closed (``shipper run | head -1``), broken or
on a full disk, the line is dropped and counted (``log_lines_dropped``), and the thread that
logged goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import structlog

__all__ = ["RateLimiter", "SafeLogger", "configure", "get_logger", "log_lines_dropped"]

_dropped = 0  # log lines that could not be written, since the process started


def log_lines_dropped() -> int:
    """Log lines dropped because they could not be written."""
    return _dropped


class SafeLogger:
    """A structlog logger that writes one line per call to a file descriptor and drops (and
    counts) a line it cannot write, instead of raising in the caller's thread."""

    def __init__(self, file: TextIO | None = None) -> None:
        self._file = file if file is not None else sys.stdout
        self._fd: int | None = None
        # The reader is gone for good (EPIPE), or there never was one (``sys.stdout`` is
        # None when the daemon was started with descriptor 1 closed): stop trying.
        self._broken = self._file is None
        if self._file is not None:
            try:
                self._fd = self._file.fileno()
            except (OSError, ValueError):  # not backed by a descriptor (a test's capture)
                self._fd = None
        self._lock = threading.Lock()

    def _out(self, message: str) -> None:
        global _dropped  # noqa: PLW0603  # one process-wide counter, read by /metrics
        data = message.encode("utf-8", "replace") + b"\n"
        with self._lock:
            if self._broken:
                _dropped += 1
                return
            try:
                if self._fd is None:
                    self._file.write(message + "\n")
                    self._file.flush()
                    return
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as exc:  # EPIPE, ENOSPC, EIO, EBADF ...
                _dropped += 1
                if exc.errno in (errno.EPIPE, errno.EBADF):
                    self._broken = True
            except ValueError:  # the file object was closed
                _dropped += 1
                self._broken = True

    msg = debug = info = warning = warn = error = critical = exception = fatal = failure = _out


class _SafeLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._logger = SafeLogger(file)

    def __call__(self, *args: Any) -> SafeLogger:
        return self._logger


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(level: str = "info", fmt: str = "json") -> None:
    """Set up structlog: one JSON object per line on stdout, or a console renderer."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # kafka-python logs every failed reconnect through stdlib logging; the sender reports
    # connectivity itself (rate-limited kafka_unavailable), so keep only its critical errors.
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=_SafeLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> Any:
    """Return a bound structlog logger."""
    return structlog.get_logger().bind(**bind)


class RateLimiter:
    """Let one event through per ``interval`` per key and count the ones held back.

    ``allow(key)`` returns None while suppressing, or the number suppressed since the last
    one let through (0 the first time), so the log line can say how many were skipped.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """Return the suppressed count if ``key`` may be logged now, else None."""
        now = time.monotonic()
        with self._lock:
            if now < self._next.get(key, 0.0):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._next[key] = now + self._interval
            return self._suppressed.pop(key, 0)

    def warn(self, log: Any, event: str, key: str | None = None, **kw: Any) -> None:
        """Log ``event`` as a warning unless one went out for ``key`` (default: the event)
        within the interval; the line says how many were held back."""
        suppressed = self.allow(key or event)
        if suppressed is not None:
            log.warning(event, suppressed=suppressed, **kw)
