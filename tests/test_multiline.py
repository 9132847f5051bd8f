"""Multiline joining: stack traces become one record; limits and timeouts flush."""

from __future__ import annotations

import time

from shipper.tail.multiline import Multiline


def test_stack_trace_is_one_record() -> None:
    """Continuation lines join the record started by the last matching line."""
    ml = Multiline(r"^\d{4}-", 100, 1.0)
    out = ml.feed([b"2026-01-01 error", b"Traceback:", b"  File x", b"2026-01-01 ok"])
    assert out == [b"2026-01-01 error\nTraceback:\n  File x"]
    assert ml.flush() == b"2026-01-01 ok"
    assert ml.flush() is None


def test_max_lines_cuts_a_record() -> None:
    """A record never holds more than max_lines lines."""
    ml = Multiline(r"^START", 3, 1.0)
    out = ml.feed([b"START", b"a", b"b", b"c", b"d"])
    assert out == [b"START\na\nb"]
    assert ml.flush() == b"c\nd"


def test_timeout_makes_pending_due() -> None:
    """A pending record is due once no line has come for timeout."""
    ml = Multiline(r"^S", 10, 0.05)
    assert ml.feed([b"S1", b" cont"]) == []
    assert not ml.due(time.monotonic())
    assert ml.due(time.monotonic() + 0.1)


def test_leading_continuations_form_their_own_record() -> None:
    """Lines before the first start line are kept as one record, not lost."""
    ml = Multiline(r"^S", 10, 1.0)
    assert ml.feed([b"x", b"y", b"S"]) == [b"x\ny"]
