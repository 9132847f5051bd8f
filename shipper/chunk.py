"""The values that flow downstream: a chunk of lines and the file they were read from."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from itertools import accumulate
from operator import add

__all__ = ["LINE_OVERHEAD", "OFFSET_OVERHEAD", "Chunk", "Source", "line_starts"]

#: Bytes of Python bookkeeping per line held in memory (bytes object header and list slot),
#: counted against ``queue.max_bytes`` so the bound is a bound on memory, not just payload.
LINE_OVERHEAD = 48
#: Extra bytes per line when a chunk carries explicit line offsets (one int64 in an array).
OFFSET_OVERHEAD = 8


def line_starts(lines: list[bytes], at: int, eol: int = 1) -> array[int]:
    """File offsets of the starts of ``lines`` (each followed by ``eol`` bytes, the first at
    ``at``), computed by C code: no Python step per line."""
    starts = accumulate(map(len, lines), initial=at)
    return array("q", map(add, starts, range(0, len(lines) * eol, eol)))


@dataclass(frozen=True, slots=True, eq=False)
class Source:
    """One file of one input, shared by every chunk read from it.

    ``path`` is the name the file was opened under (a rotated file keeps it); ``input`` is
    the index of its input in the config, which says where its lines go and how.
    """

    path: str
    input: int


class Chunk:
    """Lines read from one source in one go, in file order, and where each starts in the file.

    Line ``i`` starts at ``base + len(lines[:i]) + i * eol`` (every line followed by ``eol``
    bytes of line end), unless ``offsets`` lists the starts explicitly (irregular input:
    mixed line ends, truncated or dropped long lines, joined multiline records).
    ``read_at`` is the wall-clock time of the read; ``nbytes`` the payload size of ``lines``.
    A chunk is never changed once made: ``split`` returns new chunks.
    """

    __slots__ = ("base", "eol", "lines", "nbytes", "offsets", "read_at", "source")

    def __init__(  # noqa: PLR0917  # positional on purpose: built once per read, on the hot path
        self,
        lines: list[bytes],
        nbytes: int,
        source: Source,
        read_at: float,
        base: int = 0,
        eol: int = 1,
        offsets: array[int] | None = None,
    ) -> None:
        self.lines = lines
        self.nbytes = nbytes
        self.source = source
        self.read_at = read_at
        self.base = base
        self.eol = eol
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.lines)

    def __repr__(self) -> str:
        return f"Chunk({len(self.lines)} lines, {self.nbytes} B, {self.source.path!r}@{self.base})"

    @property
    def cost(self) -> int:
        """Memory this chunk is charged for in the queue: payload plus per-line bookkeeping."""
        per_line = LINE_OVERHEAD + (OFFSET_OVERHEAD if self.offsets is not None else 0)
        return self.nbytes + per_line * len(self.lines)

    def starts(self) -> array[int]:
        """The file offset where each line starts."""
        if self.offsets is not None:
            return self.offsets
        return line_starts(self.lines, self.base, self.eol)

    def split(self, k: int, head_bytes: int) -> tuple[Chunk, Chunk]:
        """Return the first ``k`` lines (of ``head_bytes`` payload) and the rest, as chunks."""
        offs = self.offsets
        rest_bytes = self.nbytes - head_bytes
        if offs is None:
            rest_base = self.base + head_bytes + k * self.eol
            return (
                Chunk(self.lines[:k], head_bytes, self.source, self.read_at, self.base, self.eol),
                Chunk(self.lines[k:], rest_bytes, self.source, self.read_at, rest_base, self.eol),
            )
        head_offs, rest_offs = offs[:k], offs[k:]
        return (
            Chunk(
                self.lines[:k],
                head_bytes,
                self.source,
                self.read_at,
                head_offs[0] if k else self.base,
                0,
                head_offs,
            ),
            Chunk(
                self.lines[k:],
                rest_bytes,
                self.source,
                self.read_at,
                rest_offs[0] if len(rest_offs) else self.base,
                0,
                rest_offs,
            ),
        )
