"""Join continuation lines (stack traces) into one record: a record starts at a line
matching ``start_pattern`` and takes the following non-matching lines, up to ``max_lines``,
or until no line has come for ``timeout``."""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Sequence

__all__ = ["Multiline"]


class Multiline:
    """Per-file joiner; ``feed`` returns finished records, ``due``/``flush`` the pending one.

    A record's offset is the offset of its first line.
    """

    __slots__ = ("_match", "_max", "_pending", "_since", "_start", "_timeout", "joined")

    def __init__(self, start_pattern: str, max_lines: int, timeout: float) -> None:
        self._match = re.compile(start_pattern.encode()).search
        self._max = max_lines
        self._timeout = timeout
        self._pending: list[bytes] = []
        self._start = 0  # file offset of the pending record's first line
        self._since = 0.0
        self.joined = 0  # continuation lines joined since the caller last read it

    def feed(self, lines: list[bytes], offsets: Sequence[int]) -> tuple[list[bytes], array[int]]:
        """Add lines (each starting at its file offset in ``offsets``); return the records
        they completed and where each record starts."""
        out: list[bytes] = []
        out_offs = array("q")
        pending = self._pending
        match = self._match
        for i, ln in enumerate(lines):
            if pending and (match(ln) or len(pending) >= self._max):
                out.append(b"\n".join(pending))
                out_offs.append(self._start)
                pending.clear()
            elif pending:
                self.joined += 1
            if not pending:
                self._start = offsets[i]
            pending.append(ln)
        if lines:
            self._since = time.monotonic()
        return out, out_offs

    @property
    def pending_bytes(self) -> int:
        """File bytes of the pending record (lines plus newlines; CRs not counted)."""
        return sum(map(len, self._pending)) + len(self._pending)

    def due(self, now: float) -> bool:
        """True when a pending record has waited ``timeout`` for a continuation."""
        return bool(self._pending) and now - self._since >= self._timeout

    def flush(self) -> tuple[bytes, int] | None:
        """Return and clear the pending record and its offset."""
        if not self._pending:
            return None
        rec = b"\n".join(self._pending)
        self._pending.clear()
        return rec, self._start
