"""FileReader on real files: chunks of whole lines, their offsets, and what it holds back."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.chunk import Chunk, Source
from shipper.config import InputConfig, build
from shipper.ledger import Ledger
from shipper.tail.reader import FileReader
from shipper.tail.registry import Entry

MakeReader = Callable[..., FileReader]


@pytest.fixture(name="ledger")
def fixture_ledger() -> Ledger:
    """The ledger the readers report policed lines to."""
    return Ledger()


@pytest.fixture(name="warnings")
def fixture_warnings() -> list[tuple[str, dict[str, Any]]]:
    """Warnings the readers report."""
    return []


@pytest.fixture(name="make_reader")
def fixture_make_reader(
    tmp_path: Path, ledger: Ledger, warnings: list[tuple[str, dict[str, Any]]]
) -> Iterator[MakeReader]:
    """Makes a reader of ``app.log`` holding ``content``, reading from ``start``; input
    options as keywords. Every reader is closed after the test."""
    made: list[FileReader] = []

    def make(content: bytes, start: int = 0, mid_line: bool = False, **inp: Any) -> FileReader:
        path = tmp_path / "app.log"
        path.write_bytes(content)
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
        entry = Entry(st.st_dev, st.st_ino, 0, "", str(path), 0, 0, 0.0)
        r = FileReader(
            source=Source(str(path), 0),
            inp=build(InputConfig, paths=[str(path)], **inp),
            fd=fd,
            entry=entry,
            start=start,
            size=st.st_size,
            mid_line=mid_line,
            ledger=ledger,
            warn=lambda event, **kw: warnings.append((event, kw)),
        )
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def read_all(r: FileReader, piece: int = 1 << 20) -> list[tuple[Chunk | None, int]]:
    """Everything ``read`` yields with an unlimited budget."""
    return list(r.read(1 << 30, piece))


def lines_and_starts(steps: list[tuple[Chunk | None, int]]) -> list[tuple[bytes, int]]:
    """Each line read with the file offset it starts at."""
    out: list[tuple[bytes, int]] = []
    for c, _ in steps:
        if c is not None:
            out += zip(c.lines, c.starts(), strict=True)
    return out


def test_one_read_one_chunk(make_reader: MakeReader) -> None:
    """A read yields one chunk of the lines it completed, the offset that completes them,
    and each line's start."""
    r = make_reader(b"a\nbb\nccc\n")
    [(chunk, end)] = read_all(r)
    assert chunk is not None
    assert (chunk.lines, chunk.nbytes, end) == ([b"a", b"bb", b"ccc"], 6, 9)
    assert list(chunk.starts()) == [0, 2, 5]
    assert chunk.source.path.endswith("app.log")
    assert (r.read_off, r.consumed, r.idle) == (9, 9, True)


def test_small_pieces(make_reader: MakeReader) -> None:
    """Read in small pieces, a piece that completes no line yields None; the offsets are
    those of the file, and each end is where the lines handed on so far stop."""
    r = make_reader(b"a\n" + b"b" * 10 + b"\nc\n")
    steps = read_all(r, piece=4)
    assert [(c.lines if c else None, end) for c, end in steps] == [
        ([b"a"], 2),
        (None, 2),
        (None, 2),
        ([b"b" * 10, b"c"], 15),
    ]
    assert lines_and_starts(steps) == [(b"a", 0), (b"b" * 10, 2), (b"c", 13)]


def test_budget_limits_one_call(make_reader: MakeReader) -> None:
    """A call reads at most its budget; the next one goes on from there."""
    r = make_reader(b"0123456789\n" * 10)
    first = list(r.read(22, 1 << 20))
    assert [c.lines if c else None for c, _ in first] == [[b"0123456789"] * 2]
    assert r.read_off == 22
    assert not r.idle
    rest = read_all(r)
    assert len(lines_and_starts(first + rest)) == 10
    assert r.read_off == 110


def test_stop_iterating_stops_reading(make_reader: MakeReader) -> None:
    """Leaving the iteration early keeps the position right after the last piece yielded."""
    r = make_reader(b"x\n" * 100)
    it = r.read(1 << 30, 20)
    chunk, end = next(it)
    assert chunk is not None
    assert (len(chunk.lines), end, r.read_off) == (10, 20, 20)


def test_start_offset(make_reader: MakeReader) -> None:
    """Reading from a saved position gives the offsets of the file, not of the read."""
    r = make_reader(b"old\nnew 1\nnew 2\n", start=4)
    assert lines_and_starts(read_all(r)) == [(b"new 1", 4), (b"new 2", 10)]


def test_mid_line_start_skips_to_the_next_line(make_reader: MakeReader, ledger: Ledger) -> None:
    """Resuming inside a line (after a crash) skips its rest, not counted as a dropped line
    (the restart counts those bytes as ``lost_on_crash``)."""
    r = make_reader(b"a line cut in two\nwhole\n", start=7, mid_line=True)
    assert lines_and_starts(read_all(r)) == [(b"whole", 18)]
    assert ledger.snapshot().dropped_total == 0


def test_crlf_lines(make_reader: MakeReader) -> None:
    """CRLF lines lose their CR; offsets still count it."""
    r = make_reader(b"a\r\nbb\r\nc\n")
    assert lines_and_starts(read_all(r)) == [(b"a", 0), (b"bb", 3), (b"c", 7)]


def test_partial_last_line(make_reader: MakeReader) -> None:
    """A last line without newline is held back (not consumed) and is handed out by
    ``flush_partial`` with its offset, once."""
    r = make_reader(b"x\npartial")
    assert lines_and_starts(read_all(r)) == [(b"x", 0)]
    assert (r.read_off, r.consumed) == (9, 2)
    tail = r.flush_partial()
    assert tail is not None
    assert (tail.lines, list(tail.starts())) == ([b"partial"], [2])
    assert r.flush_partial() is None


def test_partial_line_completed_later(make_reader: MakeReader, tmp_path: Path) -> None:
    """The held line goes out whole when its newline arrives."""
    r = make_reader(b"par")
    assert read_all(r) == [(None, 0)]
    with (tmp_path / "app.log").open("ab") as f:
        f.write(b"tial\n")
    assert lines_and_starts(read_all(r)) == [(b"partial", 0)]
    assert r.consumed == 8


def test_truncated_file_restarts_at_zero(make_reader: MakeReader, tmp_path: Path) -> None:
    """After ``restart`` the new content is read from offset 0 and the old partial line
    is gone."""
    r = make_reader(b"old 1\nold partial")
    read_all(r)
    path = tmp_path / "app.log"
    path.write_bytes(b"new\n")
    r.restart(path.stat().st_size)
    assert (r.read_off, r.size_seen) == (0, 4)
    assert lines_and_starts(read_all(r)) == [(b"new", 0)]


def test_multiline_records(make_reader: MakeReader) -> None:
    """Continuation lines join their start line; a record goes once the next one starts,
    the last one on ``flush_joined``, each at the offset of its first line."""
    content = b"E1 boom\n  at a\n  at b\nE2 bang\n"
    r = make_reader(content, multiline={"start_pattern": r"^E"})
    steps = read_all(r)
    assert lines_and_starts(steps) == [(b"E1 boom\n  at a\n  at b", 0)]
    e2 = content.index(b"E2")
    assert steps[-1][1] == e2  # the pending record is not consumed yet
    assert r.consumed == e2
    last = r.flush_joined()
    assert last is not None
    assert (last.lines, list(last.starts())) == ([b"E2 bang"], [e2])
    assert r.consumed == len(content)
    assert r.flush_joined() is None


def test_without_multiline_flush_joined_is_none(make_reader: MakeReader) -> None:
    """A reader without multiline holds no record."""
    r = make_reader(b"a\n")
    read_all(r)
    assert r.flush_joined() is None


def test_long_line_truncated(
    make_reader: MakeReader, ledger: Ledger, warnings: list[tuple[str, dict[str, Any]]]
) -> None:
    """A line over ``max_line_bytes`` is cut, counted ``lines_truncated`` and warned about;
    its neighbours keep their offsets."""
    r = make_reader(b"ok\n" + b"L" * 100 + b"\nafter\n", max_line_bytes=16)
    assert lines_and_starts(read_all(r)) == [(b"ok", 0), (b"L" * 16, 3), (b"after", 104)]
    assert ledger.snapshot().events == {"lines_truncated": 1}
    assert [w[0] for w in warnings] == ["line_truncated"]


def test_long_line_dropped(
    make_reader: MakeReader, ledger: Ledger, warnings: list[tuple[str, dict[str, Any]]]
) -> None:
    """With ``long_lines: drop`` the line is counted as read and dropped (``line_too_long``)."""
    r = make_reader(b"ok\n" + b"L" * 100 + b"\nafter\n", max_line_bytes=16, long_lines="drop")
    assert lines_and_starts(read_all(r)) == [(b"ok", 0), (b"after", 104)]
    snap = ledger.snapshot()
    assert (snap.read_lines, snap.dropped_lines["line_too_long"]) == (1, 1)
    assert snap.dropped_bytes["line_too_long"] == 100
    assert [w[0] for w in warnings] == ["lines_dropped"]


def test_gone_after_unlink(make_reader: MakeReader, tmp_path: Path) -> None:
    """A reader tells when its file has no name left."""
    r = make_reader(b"a\n")
    assert r.gone() is False
    (tmp_path / "app.log").rename(tmp_path / "app.log.1")
    assert r.gone() is False
    (tmp_path / "app.log.1").unlink()
    assert r.gone() is True
