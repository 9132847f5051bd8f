"""Chunks: where each line starts in its file, what a chunk costs, and splitting one."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shipper.chunk import LINE_OVERHEAD, OFFSET_OVERHEAD, Chunk, Source, line_starts

SRC = Source("/logs/app.log", 0)


def chunk(
    lines: list[bytes], base: int = 0, eol: int = 1, offsets: list[int] | None = None
) -> Chunk:
    """A chunk of ``lines`` read at time 1.0 from SRC."""
    offs = array("q", offsets) if offsets is not None else None
    return Chunk(lines, sum(map(len, lines)), SRC, 1.0, base, eol, offs)


def test_line_starts() -> None:
    """Each line starts after the previous one and its line end."""
    assert list(line_starts([b"a", b"bb", b"", b"ccc"], 10)) == [10, 12, 15, 16]
    assert list(line_starts([b"a", b"bb"], 0, eol=2)) == [0, 3]
    assert list(line_starts([], 5)) == []


def test_starts_regular_and_explicit() -> None:
    """Regular chunks compute starts from base and eol; irregular ones carry them."""
    assert list(chunk([b"ab", b"c"], base=100).starts()) == [100, 103]
    assert list(chunk([b"ab", b"c"], base=100, eol=2).starts()) == [100, 104]
    assert list(chunk([b"ab", b"c"], eol=0, offsets=[7, 30]).starts()) == [7, 30]


def test_len_and_repr() -> None:
    """A chunk's length is its line count; its repr names size, file and base."""
    c = chunk([b"ab", b"c"], base=100)
    assert len(c) == 2
    assert repr(c) == "Chunk(2 lines, 3 B, '/logs/app.log'@100)"


def test_cost_counts_bookkeeping() -> None:
    """A chunk costs its payload plus per-line bookkeeping, more with explicit offsets."""
    assert chunk([b"abc", b"de"]).cost == 5 + 2 * LINE_OVERHEAD
    assert chunk([b"abc", b"de"], eol=0, offsets=[0, 4]).cost == 5 + 2 * (
        LINE_OVERHEAD + OFFSET_OVERHEAD
    )
    assert chunk([]).cost == 0


def test_split_regular() -> None:
    """Splitting a regular chunk gives two regular chunks whose starts continue the file."""
    c = chunk([b"aa", b"b", b"cccc"], base=50, eol=2)
    head, rest = c.split(2, 3)
    assert (head.lines, head.nbytes, head.base, head.eol) == ([b"aa", b"b"], 3, 50, 2)
    assert (rest.lines, rest.nbytes, rest.base, rest.eol) == ([b"cccc"], 4, 57, 2)
    assert (head.offsets, rest.offsets) == (None, None)
    assert list(head.starts()) + list(rest.starts()) == list(c.starts())
    assert head.source is rest.source is SRC
    assert head.read_at == rest.read_at == 1.0
    assert c.lines == [b"aa", b"b", b"cccc"]  # the original is unchanged


def test_split_explicit_offsets() -> None:
    """Splitting an irregular chunk splits its offsets; an empty side keeps a base."""
    c = chunk([b"x", b"yy", b"z"], base=3, eol=0, offsets=[3, 9, 20])
    head, rest = c.split(1, 1)
    assert (head.lines, list(head.starts()), head.base) == ([b"x"], [3], 3)
    assert (rest.lines, list(rest.starts()), rest.base, rest.nbytes) == (
        [b"yy", b"z"],
        [9, 20],
        9,
        3,
    )
    none, whole = c.split(0, 0)
    assert (none.lines, none.base, len(whole)) == ([], 3, 3)
    whole, none = c.split(3, 4)
    assert (len(whole), none.lines, none.base) == (3, [], 3)


@given(
    lines=st.lists(st.binary(max_size=20), max_size=30),
    base=st.integers(0, 1 << 40),
    eol=st.sampled_from([1, 2]),
    explicit=st.booleans(),
    data=st.data(),
)
def test_split_keeps_every_start(
    lines: list[bytes], base: int, eol: int, explicit: bool, data: st.DataObject
) -> None:
    """For any chunk and cut, head and rest hold the lines, bytes and starts of the whole."""
    whole = chunk(lines, base, eol)
    if explicit:
        whole = chunk(lines, base, 0, list(whole.starts()))
    k = data.draw(st.integers(0, len(lines)))
    head, rest = whole.split(k, sum(map(len, lines[:k])))
    assert head.lines + rest.lines == lines
    assert head.nbytes + rest.nbytes == whole.nbytes
    assert list(head.starts()) + list(rest.starts()) == list(whole.starts())
    assert head.cost + rest.cost == whole.cost


@pytest.mark.parametrize("eol", [1, 2])
def test_split_of_a_split(eol: int) -> None:
    """A rest can be split again and still knows where its lines start."""
    c = chunk([b"%d" % i for i in range(10)], base=1000, eol=eol)
    _, rest = c.split(4, 4)
    mid, last = rest.split(3, 3)
    assert list(mid.starts()) + list(last.starts()) == list(c.starts())[4:]
