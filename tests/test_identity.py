"""File identity: fingerprints, where to resume inside a file, and copytruncate's copies."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.chunk import Source
from shipper.config import InputConfig, build
from shipper.ledger import Ledger
from shipper.tail.identity import DEFER, Copies, fingerprint, line_start
from shipper.tail.reader import FileReader
from shipper.tail.registry import Entry


class Warnings:
    """Collects the warnings Copies reports (event name and fields)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))


@pytest.fixture(name="ledger")
def fixture_ledger() -> Ledger:
    """A fresh ledger to read the counted events and losses from."""
    return Ledger()


@pytest.fixture(name="warn")
def fixture_warn() -> Warnings:
    """The warning sink handed to Copies."""
    return Warnings()


@pytest.fixture(name="readers")
def fixture_readers() -> Iterator[list[FileReader]]:
    """Open readers made by ``open_reader``; closed after the test."""
    made: list[FileReader] = []
    yield made
    for r in made:
        r.close()


def open_reader(
    readers: list[FileReader], ledger: Ledger, path: Path, content: bytes, fp_len: int
) -> FileReader:
    """A reader of ``path`` (written with ``content``) whose identity hashes ``fp_len`` bytes."""
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    entry = Entry(
        dev=st.st_dev,
        ino=st.st_ino,
        fp_len=fp_len,
        fp=fingerprint(content[:fp_len]),
        path=str(path),
        durable=0,
        exact=0,
        seen=time.time(),
    )
    r = FileReader(
        source=Source(str(path), 0),
        inp=build(InputConfig, paths=[str(path)]),
        fd=fd,
        entry=entry,
        start=0,
        size=len(content),
        mid_line=False,
        ledger=ledger,
        warn=lambda *a, **k: None,
    )
    readers.append(r)
    return r


def lost(ledger: Ledger) -> int:
    """Bytes counted as ``truncated_unread``."""
    return ledger.snapshot().bytes_lost.get("truncated_unread", 0)


def events(ledger: Ledger) -> dict[str, int]:
    """The counted events."""
    return ledger.snapshot().events


# -- fingerprint and line_start -----------------------------------------------------------
def test_fingerprint_is_a_stable_short_hash() -> None:
    """The same bytes give the same 24-hex-digit hash; other bytes another one."""
    a = fingerprint(b"2024-01-01 first line\n")
    assert a == fingerprint(b"2024-01-01 first line\n")
    assert len(a) == 24
    assert int(a, 16) >= 0
    assert a != fingerprint(b"2024-01-01 first line!")
    assert fingerprint(b"") != a


@pytest.fixture(name="fd")
def fixture_fd(tmp_path: Path) -> Iterator[int]:
    """A descriptor of a file holding three lines: 'one', 'two', 'three' and a last line
    without newline ('tail')."""
    p = tmp_path / "f.log"
    p.write_bytes(b"one\ntwo\nthree\ntail")
    fd = os.open(p, os.O_RDONLY)
    yield fd
    os.close(fd)


@pytest.mark.parametrize(
    ("off", "want"),
    [
        (0, (0, False)),  # the start of the file starts a line
        (4, (4, False)),  # right after a newline
        (5, (8, False)),  # inside 'two': the next line
        (7, (8, False)),  # on the newline itself
        (9, (14, False)),  # inside 'three'
        (15, (18, True)),  # inside the incomplete 'tail': skip the rest when it arrives
    ],
)
def test_line_start(fd: int, off: int, want: tuple[int, bool]) -> None:
    """The resume position is the first line start at or after the offset."""
    assert line_start(fd, off, 18) == want


def test_line_start_across_long_lines(tmp_path: Path) -> None:
    """A line longer than one read (64 KiB) is skipped whole."""
    p = tmp_path / "long.log"
    p.write_bytes(b"a" * 200_000 + b"\nnext\n")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert line_start(fd, 10, p.stat().st_size) == (200_001, False)
    finally:
        os.close(fd)


# -- Copies ------------------------------------------------------------------------------
def test_empty_file_defers(ledger: Ledger, warn: Warnings) -> None:
    """An empty new file has no identity yet: look again later (it may be a copy)."""
    c = Copies(5.0, ledger, warn)
    assert c.match("/l/app.log.1", 0, fingerprint(b""), 0, []) == DEFER


def test_unrelated_file_is_new(ledger: Ledger, warn: Warnings) -> None:
    """A file matching nothing remembered and no open file is read as new (None)."""
    c = Copies(5.0, ledger, warn)
    assert c.match("/l/other.log", 5, fingerprint(b"other"), 5, []) is None
    assert events(ledger) == {}


def test_copy_of_truncated_file_resumes_where_reading_stopped(
    ledger: Ledger, warn: Warnings
) -> None:
    """A new file with the fingerprint of a truncated one is read from where we stopped;
    holding every byte we saw, nothing is lost."""
    c = Copies(5.0, ledger, warn)
    fp = fingerprint(b"head")
    c.truncated(4, fp, offset=1000, unread=200)
    assert c.match("/l/app.log.1", 4, fp, 1200, []) == 1000
    assert events(ledger) == {"copy_resumed": 1}
    assert lost(ledger) == 0
    assert warn.calls == []
    assert c.match("/l/app.log.2", 4, fp, 1200, []) is None  # each truncation matches once


def test_short_copy_counts_the_bytes_it_lacks(ledger: Ledger, warn: Warnings) -> None:
    """A copy holding only part of what we saw but did not read: the rest is counted
    ``truncated_unread`` and warned about."""
    c = Copies(5.0, ledger, warn)
    fp = fingerprint(b"head")
    c.truncated(4, fp, offset=1000, unread=200)
    assert c.match("/l/app.log.1", 4, fp, 1150, []) == 1000
    assert lost(ledger) == 50
    assert warn.calls == [("bytes_lost", {"reason": "truncated_unread", "bytes": 50})]


def test_copy_shorter_than_what_was_read(ledger: Ledger, warn: Warnings) -> None:
    """A copy that ends before our position holds nothing new: read from its end; what we
    saw unread is lost."""
    c = Copies(5.0, ledger, warn)
    fp = fingerprint(b"head")
    c.truncated(4, fp, offset=1000, unread=30)
    assert c.match("/l/app.log.1", 4, fp, 900, []) == 900
    assert lost(ledger) == 30


def test_copy_in_progress_waits_for_the_truncation(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader]
) -> None:
    """A new file with the content of a file still being read is copytruncate's copy in
    progress: it is deferred (and listed pending) until the truncation, then read from
    where reading stopped."""
    content = b"first line of the log\nsecond\n"
    r = open_reader(readers, ledger, tmp_path / "app.log", content, len(content))
    c = Copies(5.0, ledger, warn)
    copy = str(tmp_path / "app.log.1")
    # The copy so far holds fewer bytes than the original's fingerprint covers.
    assert c.match(copy, 10, fingerprint(content[:10]), 10, [r]) == DEFER
    assert c.pending == [copy]
    assert c.match(copy, len(content), r.entry.fp, len(content), [r]) == DEFER
    c.truncated(r.entry.fp_len, r.entry.fp, offset=len(content), unread=0)
    assert c.match(copy, len(content), r.entry.fp, len(content), [r]) == len(content)
    c.opened(copy)
    assert c.pending == []
    assert events(ledger) == {"copy_resumed": 1}


def test_copy_skipped_after_rotate_wait(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader]
) -> None:
    """A copy whose original is never truncated within ``rotate_wait`` is skipped to its
    end (never read twice) and counted ``copy_skipped``."""
    content = b"the same content\n"
    r = open_reader(readers, ledger, tmp_path / "app.log", content, len(content))
    c = Copies(0.0, ledger, warn)
    copy = str(tmp_path / "app.log.1")
    assert c.match(copy, len(content), r.entry.fp, len(content), [r]) == len(content)
    assert events(ledger) == {"copy_skipped": 1}


def test_readers_that_cannot_be_the_original_are_ignored(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader]
) -> None:
    """A rotated reader, the reader of the same path, and one hashing fewer bytes than the
    new file are never taken for the original of a copy."""
    content = b"some log content\n"
    same_path = open_reader(readers, ledger, tmp_path / "a.log", content, len(content))
    rotated = open_reader(readers, ledger, tmp_path / "b.log", content, len(content))
    rotated.rotated = True
    shorter = open_reader(readers, ledger, tmp_path / "c.log", content, 4)
    c = Copies(5.0, ledger, warn)
    fp = fingerprint(content)
    assert c.match(str(tmp_path / "a.log"), len(content), fp, 99, [same_path]) is None
    assert c.match("/l/x.log", len(content), fp, 99, [rotated, shorter]) is None


def test_expire_counts_unread_bytes_no_copy_turned_up_for(ledger: Ledger, warn: Warnings) -> None:
    """After ``rotate_wait`` without a copy, the bytes seen but not read in a truncated
    file are counted lost, once; a truncation with nothing unread counts nothing."""
    c = Copies(60.0, ledger, warn)
    c.truncated(4, fingerprint(b"aaaa"), offset=100, unread=70)
    c.truncated(4, fingerprint(b"bbbb"), offset=100, unread=0)
    now = time.monotonic()
    c.expire(now)
    assert lost(ledger) == 0
    c.expire(now + 61)
    assert lost(ledger) == 70
    assert warn.calls == [("bytes_lost", {"reason": "truncated_unread", "bytes": 70})]
    c.expire(now + 200)
    assert lost(ledger) == 70
    assert c.match("/l/late.log", 4, fingerprint(b"aaaa"), 170, []) is None


def test_expire_forgets_stale_pending_copies(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader]
) -> None:
    """A pending copy is forgotten once it has waited well past ``rotate_wait``."""
    content = b"original content\n"
    r = open_reader(readers, ledger, tmp_path / "app.log", content, len(content))
    c = Copies(1.0, ledger, warn)
    copy = str(tmp_path / "app.log.1")
    assert c.match(copy, len(content), r.entry.fp, len(content), [r]) == DEFER
    now = time.monotonic()
    c.expire(now)
    assert c.pending == [copy]
    c.expire(now + 10)
    assert c.pending == []
