"""Join continuation lines (stack traces) into one record: a record starts at a line
matching ``start_pattern`` and takes the following non-matching lines, up to ``max_lines``,
or until no line has come for ``timeout``."""

from __future__ import annotations

import re
import time

__all__ = ["Multiline"]


class Multiline:
    """Per-file joiner; ``feed`` returns finished records, ``due``/``flush`` the pending one."""

    __slots__ = ("_match", "_max", "_pending", "_since", "_timeout", "joined")

    def __init__(self, start_pattern: str, max_lines: int, timeout: float) -> None:
        self._match = re.compile(start_pattern.encode()).search
        self._max = max_lines
        self._timeout = timeout
        self._pending: list[bytes] = []
        self._since = 0.0
        self.joined = 0  # continuation lines joined since the caller last read it

    def feed(self, lines: list[bytes]) -> list[bytes]:
        """Add lines; return the records completed by them."""
        out: list[bytes] = []
        pending = self._pending
        match = self._match
        for ln in lines:
            if pending and (match(ln) or len(pending) >= self._max):
                out.append(b"\n".join(pending))
                pending.clear()
            elif pending:
                self.joined += 1
            pending.append(ln)
        if lines:
            self._since = time.monotonic()
        return out

    @property
    def pending_bytes(self) -> int:
        """File bytes of the pending record (lines plus newlines; CRs not counted)."""
        return sum(map(len, self._pending)) + len(self._pending)

    def due(self, now: float) -> bool:
        """True when a pending record has waited ``timeout`` for a continuation."""
        return bool(self._pending) and now - self._since >= self._timeout

    def flush(self) -> bytes | None:
        """Return and clear the pending record."""
        if not self._pending:
            return None
        rec = b"\n".join(self._pending)
        self._pending.clear()
        return rec
