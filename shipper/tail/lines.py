"""Cut a byte stream into lines: LF-terminated, one trailing CR stripped, long lines policed.

A line without its newline is kept as ``partial`` until the newline arrives; it is never
emitted early. Lines longer than ``max_line_bytes`` are truncated (the first
``max_line_bytes`` bytes are emitted, the rest up to the newline skipped) or dropped whole,
and each one is counted by the caller from ``truncated`` / ``too_long``.
"""

from __future__ import annotations

__all__ = ["LineSplitter"]


class LineSplitter:
    """Stateful splitter for one file; all per-line work is done by C-level bytes methods."""

    __slots__ = (
        "_drop",
        "_max",
        "_resuming",
        "partial",
        "skipping",
        "too_long",
        "too_long_bytes",
        "truncated",
    )

    def __init__(self, max_line_bytes: int, policy: str = "truncate", *,
                 mid_line: bool = False) -> None:
        self._max = max_line_bytes
        self._drop = policy == "drop"
        self.partial = b""
        # Inside the tail of a long line, discarding up to its newline; or, with
        # ``mid_line``, inside a line whose head was skipped (reading resumes after a crash).
        self.skipping = mid_line
        self._resuming = mid_line
        self.truncated = 0  # lines emitted truncated since last reset_counts()
        self.too_long = 0  # lines dropped as too long since last reset_counts()
        self.too_long_bytes = 0

    def reset_counts(self) -> None:
        """Zero the per-call policy counters (the caller has reported them)."""
        self.truncated = self.too_long = self.too_long_bytes = 0

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Split ``data`` (appended to the pending partial line); return (lines, payload bytes)."""
        if self.skipping:
            counted = self._drop and not self._resuming
            nl = data.find(b"\n")
            if nl < 0:
                self.too_long_bytes += len(data) if counted else 0
                return [], 0
            self.too_long_bytes += nl if counted else 0
            self.skipping = self._resuming = False
            data = data[nl + 1 :]
        if self.partial:
            data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if b"\r" in data:
            lines = [ln[:-1] if ln[-1:] == b"\r" else ln for ln in lines]
        limit = self._max
        if len(self.partial) > limit:
            # The pending line is already too long: settle it now, skip the rest of it.
            head = self.partial
            self.partial = b""
            self.skipping = True
            if self._drop:
                self.too_long += 1
                self.too_long_bytes += len(head)
            else:
                self.truncated += 1
                lines.append(head[:limit])
        if len(data) > limit and lines and max(map(len, lines)) > limit:
            lines = self._police(lines)
        return lines, sum(map(len, lines))

    def _police(self, lines: list[bytes]) -> list[bytes]:
        limit = self._max
        out: list[bytes] = []
        for ln in lines:
            if len(ln) <= limit:
                out.append(ln)
            elif self._drop:
                self.too_long += 1
                self.too_long_bytes += len(ln)
            else:
                self.truncated += 1
                out.append(ln[:limit])
        return out

    def flush(self) -> bytes | None:
        """Return and clear the pending partial line (for a file that will never grow again)."""
        p = self.partial
        self.partial = b""
        if not p or self.skipping:
            self.skipping = self._resuming = False
            return None
        return p[:-1] if p[-1:] == b"\r" else p
