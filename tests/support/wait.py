"""Wait for a condition with a deadline: the one way tests wait (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.01,
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``check`` until it returns something truthy and return that; AssertionError
    naming ``what`` (and ``detail()``, if given) once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)
