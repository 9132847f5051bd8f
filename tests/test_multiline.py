"""Multiline joining: stack traces become one record; limits and timeouts flush."""

from __future__ import annotations

import time

from shipper.tail.multiline import Multiline


def feed(ml: Multiline, lines: list[bytes], at: int = 0) -> list[bytes]:
    """Feed lines laid out one after the other from ``at``; return the records."""
    offs, pos = [], at
    for ln in lines:
        offs.append(pos)
        pos += len(ln) + 1
    return ml.feed(lines, offs)[0]


def test_stack_trace_is_one_record() -> None:
    """Continuation lines join the record started by the last matching line."""
    ml = Multiline(r"^\d{4}-", 100, 1.0)
    out = feed(ml, [b"2026-01-01 error", b"Traceback:", b"  File x", b"2026-01-01 ok"])
    assert out == [b"2026-01-01 error\nTraceback:\n  File x"]
    assert ml.flush() == (b"2026-01-01 ok", 37)
    assert ml.flush() is None


def test_records_start_at_their_first_line() -> None:
    """A record's offset is the file offset of its first line."""
    ml = Multiline(r"^S", 100, 1.0)
    recs, offs = ml.feed([b"S1", b" a", b"S2", b" b", b"S3"], [10, 13, 16, 19, 22])
    assert recs == [b"S1\n a", b"S2\n b"]
    assert list(offs) == [10, 16]
    assert ml.flush() == (b"S3", 22)


def test_max_lines_cuts_a_record() -> None:
    """A record never holds more than max_lines lines."""
    ml = Multiline(r"^START", 3, 1.0)
    out = feed(ml, [b"START", b"a", b"b", b"c", b"d"])
    assert out == [b"START\na\nb"]
    assert ml.flush() == (b"c\nd", 10)


def test_timeout_makes_pending_due() -> None:
    """A pending record is due once no line has come for timeout."""
    ml = Multiline(r"^S", 10, 0.05)
    assert feed(ml, [b"S1", b" cont"]) == []
    assert not ml.due(time.monotonic())
    assert ml.due(time.monotonic() + 0.1)


def test_leading_continuations_form_their_own_record() -> None:
    """Lines before the first start line are kept as one record, not lost."""
    ml = Multiline(r"^S", 10, 1.0)
    assert feed(ml, [b"x", b"y", b"S"]) == [b"x\ny"]
