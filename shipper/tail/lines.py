"""Cut a byte stream into lines: LF-terminated, one trailing CR stripped, long lines policed.

A line without its newline is kept as ``partial`` until the newline arrives; it is never
emitted early. Lines longer than ``max_line_bytes`` are truncated (the first
``max_line_bytes`` bytes are emitted, the rest up to the newline skipped) or dropped whole,
and each one is counted by the caller from ``truncated`` / ``too_long``.

Where each line starts in the file is known without a per-line step in the common case:
every line ends with the same ``eol`` (1 byte for LF, 2 for CRLF), so line ``i`` starts at
``base + len(lines[:i]) + i * eol``. Only irregular input (mixed line ends, policed lines)
gets an explicit array of offsets.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

from shipper.chunk import line_starts

__all__ = ["Cut", "LineSplitter"]


class Cut(NamedTuple):
    """The lines one ``feed`` completed, and where they start in the file."""

    lines: list[bytes]
    nbytes: int  # payload bytes of ``lines``
    base: int  # file offset of the first line
    eol: int  # bytes after each line (1 or 2); 0 when ``offsets`` is given
    offsets: array[int] | None  # explicit starts, for irregular input


_NONE: Cut = Cut([], 0, 0, 1, None)


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

    def __init__(
        self, max_line_bytes: int, policy: str = "truncate", *, mid_line: bool = False
    ) -> None:
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

    def feed(self, data: bytes, at: int = 0) -> Cut:
        """Split ``data``, read at file offset ``at``, appended to the pending partial line."""
        if self.skipping:
            counted = self._drop and not self._resuming
            nl = data.find(b"\n")
            if nl < 0:
                self.too_long_bytes += len(data) if counted else 0
                return _NONE
            self.too_long_bytes += nl if counted else 0
            self.skipping = self._resuming = False
            data = data[nl + 1 :]
            at += nl + 1
        if self.partial:
            at -= len(self.partial)
            data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        eol = 1
        offs: array[int] | None = None
        if b"\r" in data:
            crlf = data.count(b"\r\n")
            if crlf:
                if crlf == len(lines):
                    eol = 2
                else:
                    offs = line_starts(lines, at)
                lines = [ln[:-1] if ln[-1:] == b"\r" else ln for ln in lines]
        limit = self._max
        if len(self.partial) > limit or (
            len(data) > limit and lines and max(map(len, lines)) > limit
        ):
            if offs is None:
                offs = line_starts(lines, at, eol)
            lines, offs = self._police(lines, offs, at + len(data))
        if offs is not None:
            return Cut(lines, sum(map(len, lines)), offs[0] if offs else at, 0, offs)
        return Cut(lines, sum(map(len, lines)), at, eol, None)

    def _police(
        self, lines: list[bytes], offs: array[int], end: int
    ) -> tuple[list[bytes], array[int]]:
        """Truncate or drop the lines over the limit (the pending one too, ending at ``end``)."""
        limit = self._max
        out: list[bytes] = []
        out_offs = array("q")
        for i, ln in enumerate(lines):
            if len(ln) <= limit:
                out.append(ln)
            elif self._drop:
                self.too_long += 1
                self.too_long_bytes += len(ln)
                continue
            else:
                self.truncated += 1
                out.append(ln[:limit])
            out_offs.append(offs[i])
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
                out.append(head[:limit])
                out_offs.append(end - len(head))
        return out, out_offs

    def flush(self) -> bytes | None:
        """Return and clear the pending partial line (for a file that will never grow again)."""
        p = self.partial
        self.partial = b""
        if not p or self.skipping:
            self.skipping = self._resuming = False
            return None
        return p[:-1] if p[-1:] == b"\r" else p
