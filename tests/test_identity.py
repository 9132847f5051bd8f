"""File identity: fingerprints, where to resume inside a file, and copytruncate's copies."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from shipper.chunk import Source
from shipper.config import InputConfig, build
from shipper.ledger import Ledger
from shipper.tail import identity
from shipper.tail.identity import DEFER, ORPHAN_KEEP, Copies, fingerprint, line_start
from shipper.tail.reader import FileReader
from shipper.tail.registry import Entry

#: The tailer hands ``Copies`` the first ``fingerprint_bytes`` (the default) of a file.
HEAD = 1024


def log_bytes(tag: bytes, size: int) -> bytes:
    """``size`` bytes of distinct numbered lines starting with ``tag``."""
    n = size // 10 + 1
    return b"".join(b"%s %06d\n" % (tag, i) for i in range(n))[:size]


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
    readers: list[FileReader],
    ledger: Ledger,
    path: Path,
    content: bytes,
    fp_len: int,
    *,
    copies: Copies,
) -> FileReader:
    """A reader of ``path`` (written with ``content``) whose identity hashes ``fp_len`` bytes,
    tracked by ``copies`` as the tailer does when it opens a file."""
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
    copies.track(r, content[:HEAD])
    return r


@dataclass
class NewFile:
    """A file just found, as the tailer describes it to ``Copies.match``."""

    path: str
    ident: str
    head: bytes
    size: int
    fd: int


NewFiles = Callable[[str, bytes], NewFile]


@pytest.fixture(name="new_file")
def fixture_new_file(tmp_path: Path) -> Iterator[NewFiles]:
    """Writes a new file with the given name and content and opens it; closed after the
    test. Writing the same name again changes the content of the same file."""
    fds: dict[str, int] = {}

    def make(name: str, content: bytes) -> NewFile:
        path = tmp_path / name
        path.write_bytes(content)
        if str(path) not in fds:
            fds[str(path)] = os.open(path, os.O_RDONLY)
        fd = fds[str(path)]
        st = os.fstat(fd)
        return NewFile(str(path), f"{st.st_dev}:{st.st_ino}", content[:HEAD], len(content), fd)

    yield make
    for fd in fds.values():
        os.close(fd)


def match(c: Copies, f: NewFile) -> int | Literal["defer"] | None:
    """``Copies.match`` for the new file ``f``."""
    return c.match(f.path, f.ident, f.head, f.size, f.fd)


def lost(ledger: Ledger) -> int:
    """Bytes counted as ``truncated_unread``."""
    return ledger.snapshot().bytes_lost.get("truncated_unread", 0)


def events(ledger: Ledger) -> dict[str, int]:
    """The counted events."""
    return ledger.snapshot().events


def skipped(ledger: Ledger) -> dict[str, int]:
    """Bytes not read on purpose, by reason."""
    return ledger.snapshot().bytes_skipped


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
@pytest.mark.parametrize(
    ("original_now", "want"),
    [
        (b"same", "copy"),  # copied, not truncated yet
        (b"", "truncated"),  # copied, then truncated
        (b"rewritten", "truncated"),  # truncated and written past where we were
        (b"longer", "copy"),  # copied, and the app went on writing
        (b"unrelated", None),  # another file that happens to share nothing
    ],
)
def test_original_of(tmp_path: Path, original_now: bytes, want: str | None) -> None:
    """How a new file relates to a known one: a copy of what it holds now, of what it held
    before a truncation, or neither."""
    content = log_bytes(b"app", 3000)
    seen = len(content)
    now = {
        b"same": content,
        b"": b"",
        b"rewritten": log_bytes(b"new", 4000),
        b"longer": content + log_bytes(b"more", 500),
        b"unrelated": log_bytes(b"zzz", 3000),
    }[original_now]
    (tmp_path / "app.log").write_bytes(now)
    (tmp_path / "app.log.1").write_bytes(content if want is not None else log_bytes(b"cpy", 3000))
    fd = os.open(tmp_path / "app.log.1", os.O_RDONLY)
    of_fd = os.open(tmp_path / "app.log", os.O_RDONLY)
    try:
        head = os.pread(fd, HEAD, 0)
        got = identity.original_of(
            fd, os.fstat(fd).st_size, head, of_fd, seen=seen, fp_len=HEAD,
            fp=fingerprint(content[:HEAD]),
        )  # fmt: skip
    finally:
        os.close(fd)
        os.close(of_fd)
    assert got == want


def test_empty_file_defers(ledger: Ledger, warn: Warnings, new_file: NewFiles) -> None:
    """An empty new file has no identity yet: look again later (it may be a copy)."""
    c = Copies(5.0, ledger, warn)
    assert match(c, new_file("app.log.1", b"")) == DEFER


def test_unrelated_file_is_new(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader], new_file: NewFiles
) -> None:
    """A file matching nothing remembered and no open file is read as new (None)."""
    c = Copies(5.0, ledger, warn)
    gone = log_bytes(b"gone", 1200)
    c.truncated(HEAD, fingerprint(gone[:HEAD]), offset=1000, unread=200)
    open_reader(readers, ledger, tmp_path / "app.log", log_bytes(b"app", 1200), HEAD, copies=c)
    assert match(c, new_file("other.log", log_bytes(b"other", 1200))) is None
    assert events(ledger) == {}


def test_copy_of_truncated_file_resumes_where_reading_stopped(
    ledger: Ledger, warn: Warnings, new_file: NewFiles
) -> None:
    """A new file with the fingerprint of a truncated one is read from where we stopped;
    holding every byte we saw, nothing is lost."""
    c = Copies(5.0, ledger, warn)
    content = log_bytes(b"app", 1200)
    c.truncated(HEAD, fingerprint(content[:HEAD]), offset=1000, unread=200)
    assert match(c, new_file("app.log.1", content)) == 1000
    assert events(ledger) == {"copy_resumed": 1}
    assert skipped(ledger) == {"copy_resumed": 1000}
    assert lost(ledger) == 0
    assert warn.calls == []
    # Each truncation matches once.
    assert match(c, new_file("app.log.2", content)) is None


def test_short_copy_counts_the_bytes_it_lacks(
    ledger: Ledger, warn: Warnings, new_file: NewFiles
) -> None:
    """A copy holding only part of what we saw but did not read: the rest is counted
    ``truncated_unread`` and warned about."""
    c = Copies(5.0, ledger, warn)
    content = log_bytes(b"app", 1200)
    c.truncated(HEAD, fingerprint(content[:HEAD]), offset=1000, unread=200)
    assert match(c, new_file("app.log.1", content[:1150])) == 1000
    assert lost(ledger) == 50
    assert warn.calls == [("bytes_lost", {"reason": "truncated_unread", "bytes": 50})]


def test_copy_shorter_than_what_was_read(
    ledger: Ledger, warn: Warnings, new_file: NewFiles
) -> None:
    """A copy that ends before our position holds nothing new: read from its end; what we
    saw unread is lost."""
    c = Copies(5.0, ledger, warn)
    content = log_bytes(b"app", 3000)
    c.truncated(HEAD, fingerprint(content[:HEAD]), offset=2500, unread=30)
    assert match(c, new_file("app.log.1", content[:2000])) == 2000
    assert lost(ledger) == 30


def test_copy_in_progress_waits_for_the_truncation(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader], new_file: NewFiles
) -> None:
    """A new file with the content of a file still being read is copytruncate's copy in
    progress: it is deferred (and listed pending) until the truncation, then read from
    where reading stopped."""
    content = log_bytes(b"app", 2000)
    c = Copies(5.0, ledger, warn)
    r = open_reader(readers, ledger, tmp_path / "app.log", content, HEAD, copies=c)
    # The copy so far holds fewer bytes than the original's fingerprint covers.
    copy = new_file("app.log.1", content[:100])
    assert match(c, copy) == DEFER
    assert c.pending == [copy.path]
    copy = new_file("app.log.1", content)
    assert match(c, copy) == DEFER
    os.truncate(r.path, 0)
    c.truncated(r.entry.fp_len, r.entry.fp, offset=len(content), unread=0)
    assert match(c, copy) == len(content)
    c.opened(copy.path)
    assert c.pending == []
    assert events(ledger) == {"copy_resumed": 1}


def test_copy_of_a_file_truncated_and_rewritten_past_where_we_were_waits(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader], new_file: NewFiles
) -> None:
    """When reading lags, copytruncate's copy may be found after the original was truncated
    and written past where we were, before the tailer saw the truncation: the copy starts
    like what we were reading, the original no longer does. It waits for the truncation
    and is then read from where reading stopped, never from its start."""
    content = log_bytes(b"app", 2000)
    c = Copies(5.0, ledger, warn)
    r = open_reader(readers, ledger, tmp_path / "app.log", content, HEAD, copies=c)
    # New content, longer than what the original held: no size tells it was truncated.
    Path(r.path).write_bytes(log_bytes(b"new", 3000))
    copy = new_file("app.log.1", content)
    assert match(c, copy) == DEFER
    c.truncated(r.entry.fp_len, r.entry.fp, offset=len(content), unread=0)
    assert match(c, copy) == len(content)
    assert events(ledger) == {"copy_resumed": 1}


def test_a_truncation_during_the_byte_proof_is_seen(
    tmp_path: Path,
    ledger: Ledger,
    warn: Warnings,
    readers: list[FileReader],
    new_file: NewFiles,
) -> None:
    """copytruncate truncates right after it copies: the truncation may land while the new
    file is being compared with the original. The proof then fails (the original is empty)
    although the original was not truncated when looked at just before. The truncation is
    looked for after the proof, so the copy waits for it instead of being read from its
    start (a loaded run's state machine saw every line read before twice)."""
    content = log_bytes(b"app", 2000)
    c = Copies(5.0, ledger, warn)
    r = open_reader(readers, ledger, tmp_path / "app.log", content, HEAD, copies=c)
    copy = new_file("app.log.1", content)
    proof = identity.is_copy_of

    def truncated_meanwhile(*args: Any) -> bool:
        os.truncate(r.path, 0)
        return proof(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(identity, "is_copy_of", truncated_meanwhile)
        assert match(c, copy) == DEFER
    c.truncated(r.entry.fp_len, r.entry.fp, offset=len(content), unread=0)
    assert match(c, copy) == len(content)
    assert events(ledger) == {"copy_resumed": 1}


def test_copy_skipped_after_rotate_wait(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader], new_file: NewFiles
) -> None:
    """A copy whose original is never truncated within ``rotate_wait`` is skipped to its
    end (never read twice) and counted ``copy_skipped``."""
    content = log_bytes(b"app", 2000)
    c = Copies(0.0, ledger, warn)
    open_reader(readers, ledger, tmp_path / "app.log", content, HEAD, copies=c)
    assert match(c, new_file("app.log.1", content)) == len(content)
    assert events(ledger) == {"copy_skipped": 1}
    assert skipped(ledger) == {"copy": len(content)}


@pytest.fixture(name="clock")
def fixture_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The identity module's monotonic clock, moved on by the test (``clock[0] += s``)."""
    now = [1000.0]
    monkeypatch.setattr(identity.time, "monotonic", lambda: now[0])
    return now


def test_a_copy_still_growing_keeps_waiting(
    tmp_path: Path,
    ledger: Ledger,
    readers: list[FileReader],
    new_file: NewFiles,
    clock: list[float],
) -> None:
    """The wait for a truncation starts again whenever the copy grew: a copy made slowly
    is not opened at the size it has so far (what it gets next was read from the
    original); once it stopped growing for ``rotate_wait`` with no truncation, it is
    skipped whole."""
    content = log_bytes(b"app", 6000)
    c = Copies(1.0, ledger, Warnings())
    open_reader(readers, ledger, tmp_path / "app.log", content, HEAD, copies=c)
    for end in range(2000, 6001, 1000):  # 4 s in all: each step within rotate_wait
        copy = new_file("app.log.1", content[:end])
        assert match(c, copy) == DEFER
        clock[0] += 0.9
    assert match(c, copy) == DEFER  # 0.9 s since it last grew
    clock[0] += 0.2
    assert match(c, copy) == len(content)
    assert events(ledger) == {"copy_skipped": 1}
    assert skipped(ledger) == {"copy": len(content)}


def test_readers_that_cannot_be_the_original_are_ignored(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader], new_file: NewFiles
) -> None:
    """A rotated reader, the reader of the same path, and one whose file only starts like
    the new file are never taken for the original of a copy."""
    content = log_bytes(b"app", 2000)
    c = Copies(5.0, ledger, warn)
    same_path = open_reader(readers, ledger, tmp_path / "a.log", content, HEAD, copies=c)
    rotated = open_reader(readers, ledger, tmp_path / "b.log", content, HEAD, copies=c)
    rotated.rotated = True
    other_end = content[:1500] + log_bytes(b"end", 500)
    open_reader(readers, ledger, tmp_path / "c.log", other_end, HEAD, copies=c)
    copy = new_file("copy.log", content)
    assert c.match(same_path.path, copy.ident, copy.head, copy.size, copy.fd) is None
    assert c.pending == []
    # The same file is taken for a copy of the rotated reader's file once that is live.
    rotated.rotated = False
    assert c.match(same_path.path, copy.ident, copy.head, copy.size, copy.fd) == DEFER


def test_expire_counts_unread_bytes_no_copy_turned_up_for(
    ledger: Ledger, warn: Warnings, new_file: NewFiles
) -> None:
    """After ``rotate_wait`` without a copy, the bytes seen but not read in a truncated
    file are counted lost, once; a truncation with nothing unread counts nothing."""
    c = Copies(60.0, ledger, warn)
    a, b = log_bytes(b"aaaa", 1200), log_bytes(b"bbbb", 1200)
    c.truncated(HEAD, fingerprint(a[:HEAD]), offset=100, unread=70)
    c.truncated(HEAD, fingerprint(b[:HEAD]), offset=100, unread=0)
    now = time.monotonic()
    c.expire(now)
    assert lost(ledger) == 0
    c.expire(now + 61)
    assert lost(ledger) == 70
    assert warn.calls == [("bytes_lost", {"reason": "truncated_unread", "bytes": 70})]
    c.expire(now + 200)
    assert lost(ledger) == 70
    assert match(c, new_file("late.log", a[:1170])) is None


def test_orphans_wait_at_least_orphan_keep_and_are_counted_at_stop(
    ledger: Ledger, warn: Warnings
) -> None:
    """A truncated file's identity waits ``ORPHAN_KEEP`` even when ``rotate_wait`` is
    shorter (a loaded machine finds the copy late); ``expire()`` without a time (the
    tailer's stop) counts what every waiting truncation left unread."""
    c = Copies(1.0, ledger, warn, found_within=0.5)
    a = log_bytes(b"aaaa", 1200)
    c.truncated(HEAD, fingerprint(a[:HEAD]), offset=100, unread=70)
    now = time.monotonic()
    c.expire(now + ORPHAN_KEEP - 1)
    assert lost(ledger) == 0
    c.expire()
    assert lost(ledger) == 70
    c.expire()
    assert lost(ledger) == 70


def test_expire_forgets_stale_pending_copies(
    tmp_path: Path, ledger: Ledger, warn: Warnings, readers: list[FileReader], new_file: NewFiles
) -> None:
    """A pending copy is forgotten once it has waited well past ``rotate_wait``."""
    content = log_bytes(b"original", 2000)
    c = Copies(1.0, ledger, warn)
    open_reader(readers, ledger, tmp_path / "app.log", content, HEAD, copies=c)
    copy = new_file("app.log.1", content)
    assert match(c, copy) == DEFER
    now = time.monotonic()
    c.expire(now)
    assert c.pending == [copy.path]
    c.expire(now + 10)
    assert c.pending == []
