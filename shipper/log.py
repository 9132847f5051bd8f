"""structlog setup (JSON or console to stdout) and a rate limiter for repeated warnings."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import structlog

__all__ = ["RateLimiter", "configure", "get_logger"]

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
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
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
