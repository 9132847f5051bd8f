"""One open file: its descriptor, position, line splitter, multiline joiner, and the lines the
queue could not take yet.

``read`` yields chunks of whole lines (or joined records) together with the file offset that
handing them on completes; the caller makes that offset durable, hands the chunk downstream
and keeps what did not fit in ``carry``. The reader itself never touches the registry or the
queue.
"""

from __future__ import annotations

import os
import time
from array import array
from collections.abc import Callable, Iterator

from shipper.chunk import Chunk, Source, line_starts
from shipper.config import InputConfig
from shipper.ledger import Ledger
from shipper.tail.lines import LineSplitter
from shipper.tail.multiline import Multiline
from shipper.tail.registry import Entry

__all__ = ["FileReader"]


class FileReader:
    """The reading state of one open file (an entry of the tailer's open-file table)."""

    __slots__ = (
        "_inp",
        "_ledger",
        "_warn",
        "always_poll",
        "behind_since",
        "carry",
        "carry_end",
        "entry",
        "fd",
        "last_growth",
        "ml",
        "path",
        "read_off",
        "rotated",
        "size_seen",
        "source",
        "splitter",
    )

    def __init__(
        self,
        *,
        source: Source,
        inp: InputConfig,
        fd: int,
        entry: Entry,
        start: int,
        size: int,
        mid_line: bool,
        ledger: Ledger,
        warn: Callable[..., None],
    ) -> None:
        self.source = source
        self.path = source.path
        self._inp = inp
        self._ledger = ledger
        self._warn = warn
        self.fd = fd
        self.entry = entry
        self.read_off = start
        self.size_seen = size
        self.last_growth = time.monotonic()
        self.rotated = False  # renamed away or deleted: drained, then closed
        self.always_poll = False  # no inotify event tells when it grows (opened via a link)
        self.behind_since: float | None = None
        self.splitter = LineSplitter(inp.max_line_bytes, inp.long_lines, mid_line=mid_line)
        m = inp.multiline
        self.ml = Multiline(m.start_pattern, m.max_lines, m.timeout) if m else None
        # Lines read but not yet taken by the queue, and the offset handing them on completes.
        self.carry: Chunk | None = None
        self.carry_end = 0

    def __repr__(self) -> str:
        return f"FileReader({self.path!r}, off={self.read_off}, rotated={self.rotated})"

    @property
    def idle(self) -> bool:
        """Everything seen in the file has been read."""
        return self.read_off >= self.size_seen

    @property
    def consumed(self) -> int:
        """Offset of the first byte not yet part of a line handed on (partial, skipped, joined
        lines excluded)."""
        s = self.splitter
        end = self.read_off if s.skipping else self.read_off - len(s.partial)
        if self.ml is not None:
            end = max(end - self.ml.pending_bytes, 0)
        return end

    def restart(self, size: int) -> None:
        """The file was truncated: read its new content from offset 0."""
        inp = self._inp
        self.read_off = 0
        self.size_seen = size
        self.splitter = LineSplitter(inp.max_line_bytes, inp.long_lines)

    def read(self, budget: int, piece: int) -> Iterator[tuple[Chunk | None, int]]:
        """Read up to ``budget`` bytes in reads of ``piece``; yield, for each read, the chunk
        of lines it completed (None if none) and the offset that handing it on completes.

        Stop iterating to stop reading (the queue is full): the position stays right after
        the last piece yielded.
        """
        while budget > 0:
            at = self.read_off
            data = os.pread(self.fd, min(piece, budget), at)
            if not data:
                return
            self.read_off = at + len(data)
            budget -= len(data)
            yield self._cut(data, at), self.consumed

    def _cut(self, data: bytes, at: int) -> Chunk | None:
        """Lines (or joined records) completed by ``data``, as a chunk; None if none."""
        s = self.splitter
        cut = s.feed(data, at)
        if s.truncated or s.too_long:
            self._report_long()
        if not cut.lines:
            return None
        if self.ml is not None:
            starts = (
                cut.offsets
                if cut.offsets is not None
                else line_starts(cut.lines, cut.base, cut.eol)
            )
            records, offs = self.ml.feed(cut.lines, starts)
            if not records:
                return None
            return Chunk(
                records, sum(map(len, records)), self.source, time.time(), offs[0], 0, offs
            )
        return Chunk(
            cut.lines, cut.nbytes, self.source, time.time(), cut.base, cut.eol, cut.offsets
        )

    def _report_long(self) -> None:
        s = self.splitter
        if s.truncated:
            self._ledger.event("lines_truncated", s.truncated)
            self._warn(
                "line_truncated",
                path=self.path,
                count=s.truncated,
                max_line_bytes=self._inp.max_line_bytes,
            )
        if s.too_long:
            self._ledger.rejected("line_too_long", s.too_long, s.too_long_bytes)
            self._warn("lines_dropped", reason="line_too_long", path=self.path, count=s.too_long)
        s.reset_counts()

    def flush_joined(self) -> Chunk | None:
        """The record the multiline joiner holds (complete lines, so always safe to send)."""
        if self.ml is None:
            return None
        got = self.ml.flush()
        if got is None:
            return None
        rec, off = got
        return self._one(rec, off)

    def flush_partial(self) -> Chunk | None:
        """The last line of a file that will not grow again, though it has no newline."""
        start = self.read_off - len(self.splitter.partial)
        tail = self.splitter.flush()
        return None if tail is None else self._one(tail, start)

    def _one(self, line: bytes, offset: int) -> Chunk:
        return Chunk([line], len(line), self.source, time.time(), offset, 0, array("q", [offset]))

    def gone(self) -> bool:
        """True when the file has no name left (deleted)."""
        try:
            return os.fstat(self.fd).st_nlink == 0
        except OSError:
            return False

    def close(self) -> None:
        """Close the descriptor."""
        os.close(self.fd)
