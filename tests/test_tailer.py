"""The tailer on real files with real inotify: rotation, truncation, identity, restarts."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.chunk import Chunk
from shipper.config import InputConfig, TailConfig, build
from shipper.ledger import Ledger
from shipper.log import get_logger
from shipper.tail import Registry, Tailer, identity
from tests.support.wait import wait_until


class Sink:
    """Stands in for the queue: collects what the tailer hands on, and can refuse it (a full
    queue) while ``gate`` is closed."""

    def __init__(self, ledger: Ledger) -> None:
        self.lines: list[bytes] = []
        self.lock = threading.Lock()
        self.ledger = ledger
        self.gate = threading.Event()
        self.gate.set()

    def put(self, chunk: Chunk) -> None:
        assert chunk.nbytes == sum(map(len, chunk.lines))
        with self.lock:
            self.lines += chunk.lines
        self.ledger.admitted(len(chunk.lines), chunk.nbytes)
        self.ledger.sent(len(chunk.lines), chunk.nbytes)

    def offer(self, chunk: Chunk) -> Chunk | None:
        if not self.gate.is_set():
            return chunk
        self.put(chunk)
        return None

    def wait_for_room(self, timeout: float) -> bool:
        return self.gate.wait(timeout)


class Harness:
    """One tailer over ``root`` with a registry in ``state``."""

    def __init__(self, root: Path, state: Path, log: Any = None, **input_kw: Any) -> None:
        self.root = root
        self.state = state
        self.log = log if log is not None else get_logger()
        self.input_kw = {"paths": [str(root / "*.log*")], "start_at": "beginning", **input_kw}
        self.ledger = Ledger()
        self.sink = Sink(self.ledger)
        self.tailer: Tailer | None = None

    def start(self, **tail_kw: Any) -> Harness:
        cfg = TailConfig(
            **{"poll_interval": 0.05, "rescan_interval": 0.3, "rotate_wait": 0.5, **tail_kw}
        )
        self.registry = Registry(str(self.state / "registry.json"), 4096, 3600)
        self.tailer = Tailer(
            [build(InputConfig, **self.input_kw)],
            cfg,
            registry=self.registry,
            offer=self.sink.offer,
            put=self.sink.put,
            wait_for_room=self.sink.wait_for_room,
            ledger=self.ledger,
            log=self.log,
        )
        self.tailer.start()
        return self

    def stop(self) -> None:
        if self.tailer is not None:
            self.tailer.stop()
            self.tailer = None

    def crash(self) -> None:
        """Stop without saving exact positions (what kill -9 leaves behind)."""
        assert self.tailer is not None
        self.tailer.abandon()
        self.tailer = None

    def wait(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        wait_until(
            pred,
            timeout,
            "the tailer",
            detail=lambda: (
                f"got {len(self.sink.lines)} lines, events={self.ledger.snapshot().events}"
            ),
        )

    def settle(self) -> None:
        """Wait until the tailer has looked at every file a few more times (so anything it
        would wrongly send again has had the chance to arrive)."""
        assert self.tailer is not None
        polls = self.tailer.polls
        self.wait(lambda: self.tailer is not None and self.tailer.polls >= polls + 3)

    def opened(self, n: int = 1) -> None:
        """Wait until ``n`` files are open (adopted at their start position)."""
        self.wait(lambda: self.tailer is not None and len(self.tailer.open_files()) >= n)

    def wait_lines(self, n: int, timeout: float = 10.0) -> list[bytes]:
        self.wait(lambda: len(self.sink.lines) >= n, timeout)
        self.settle()  # and nothing more arrives
        return self.sink.lines


MakeHarness = Callable[..., Harness]


@pytest.fixture(name="harness")
def fixture_harness(tmp_path: Path) -> Iterator[MakeHarness]:
    """Makes tailer harnesses (input options as keywords) over a fresh log directory;
    every one is stopped after the test."""
    made: list[Harness] = []

    def make(**input_kw: Any) -> Harness:
        root = tmp_path / "logs"
        root.mkdir(exist_ok=True)
        made.append(Harness(root, tmp_path / "state", **input_kw))
        return made[-1]

    yield make
    for h in made:
        h.stop()


@pytest.fixture(name="h")
def fixture_h(harness: MakeHarness) -> Harness:
    """A tailer harness over a fresh log directory with the default input."""
    return harness()


def write(path: Path, *lines: str, mode: str = "ab") -> None:
    with path.open(mode) as f:
        f.write("".join(x + "\n" for x in lines).encode())


def test_existing_and_new_files_are_read(h: Harness) -> None:
    """Files present at start (start_at beginning) and created later are read once."""
    write(h.root / "a.log", "a1", "a2")
    h.start()
    write(h.root / "b.log", "b1")
    assert sorted(h.wait_lines(3)) == [b"a1", b"a2", b"b1"]


def test_start_at_end_skips_existing_content(harness: MakeHarness) -> None:
    """With start_at: end and no registry, existing content is skipped; new lines are read."""
    h = harness(start_at="end")
    root = h.root
    write(root / "a.log", "old")
    h.start()
    h.opened()
    write(root / "a.log", "new")
    assert h.wait_lines(1) == [b"new"]


def test_rename_rotation_with_glob_matching_rotated_names(h: Harness) -> None:
    """app.log -> app.log.1 plus a new app.log: every line once, the rotated file not re-read."""
    log = h.root / "app.log"
    write(log, *[f"one {i}" for i in range(100)])
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 100)
    write(log, *[f"one-late {i}" for i in range(10)])
    os.rename(log, h.root / "app.log.1")
    write(log, *[f"two {i}" for i in range(50)])
    got = h.wait_lines(160)
    assert len(got) == 160
    assert len(set(got)) == 160
    assert h.ledger.snapshot().events.get("files_rotated", 0) >= 1


def test_copytruncate_reads_the_copy_from_where_it_stopped(h: Harness) -> None:
    """copytruncate with the copy matching the glob, while the queue is full and the last
    lines are still held: no line twice, none lost."""
    log = h.root / "app.log"
    write(log, *[f"before {i:04d} " + "x" * 40 for i in range(200)])
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 200)
    h.sink.gate.clear()  # the queue is full: what is read next is held, not handed on
    write(log, *[f"held {i:04d}" for i in range(30)])
    h.wait(
        lambda: (
            h.ledger.snapshot().events.get("files_opened") == 1
            and h.tailer is not None
            and h.tailer.polls > 0
        )
    )
    shutil.copyfile(log, h.root / "app.log.1")
    with log.open("r+b") as f:
        f.truncate(0)
    write(log, *[f"after {i:04d}" for i in range(20)])
    h.sink.gate.set()
    got = h.wait_lines(250, timeout=15)
    assert len(got) == len(set(got)), "a line was read twice"
    assert len(got) == 250
    assert h.ledger.snapshot().events.get("copy_resumed") == 1


@pytest.mark.parametrize("closed_by", ["close_inactive", "max_open_files"])
def test_copytruncate_of_a_closed_file_reads_the_copy_from_where_it_stopped(
    harness: MakeHarness, closed_by: str
) -> None:
    """A file closed (idle, or to make room for others) and then copytruncated: no reader
    holds it, but its copy is still the old content of a file we read. The copy is read
    from where we stopped (once read from 0: every line twice); the new content from 0."""
    h = harness(close_inactive=0.2 if closed_by == "close_inactive" else 300)
    log = h.root / "app.log"
    write(log, *[f"old {i:04d} " + "x" * 40 for i in range(50)])
    if closed_by == "close_inactive":
        h.start()
    else:  # another file is read after it, and only one may be open
        h.start(max_open_files=1)
        h.wait(lambda: len(h.sink.lines) >= 50)
        write(h.root / "other.log", "other")
    event = "files_closed_inactive" if closed_by == "close_inactive" else "files_closed_for_room"
    h.wait(lambda: h.ledger.snapshot().events.get(event, 0) >= 1)
    h.wait_lines(50 + (closed_by == "max_open_files"))
    shutil.copyfile(log, h.root / "app.log.1")
    with log.open("r+b") as f:
        f.truncate(0)
    h.wait(lambda: h.ledger.snapshot().events.get("copy_resumed") == 1)
    write(log, "new 0000")
    got = h.wait_lines(52 if closed_by == "max_open_files" else 51)
    assert len(got) == len(set(got)), "a line was read twice"
    assert got[-1] == b"new 0000"


def test_a_truncation_during_the_byte_proof_of_a_closed_file_is_seen(
    harness: MakeHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copytruncate of a closed file, with the truncation landing while the new file is
    being compared with the original (not truncated when looked at just before): the copy
    is still read from where we stopped, not from its start."""
    h = harness(close_inactive=0.2)
    log = h.root / "app.log"
    write(log, *[f"old {i:04d} " + "x" * 40 for i in range(50)])
    h.start()
    h.wait(lambda: h.ledger.snapshot().events.get("files_closed_inactive", 0) >= 1)
    h.wait_lines(50)
    proof = identity.is_copy_of

    def truncated_meanwhile(*args: Any) -> bool:
        if log.stat().st_size:
            os.truncate(log, 0)
        return proof(*args)

    monkeypatch.setattr(identity, "is_copy_of", truncated_meanwhile)
    shutil.copyfile(log, h.root / "app.log.1")
    h.wait(lambda: h.ledger.snapshot().events.get("copy_resumed") == 1)
    write(log, "new 0000")
    got = h.wait_lines(51)
    assert len(got) == len(set(got)), "a line was read twice"
    assert got[-1] == b"new 0000"


def test_a_plain_copy_of_a_closed_file_is_skipped(harness: MakeHarness) -> None:
    """``cp`` of a file closed idle (the original keeps its content): after ``rotate_wait``
    the copy is skipped whole and counted, as a copy of an open file is."""
    h = harness(close_inactive=0.2)
    log = h.root / "app.log"
    write(log, *[f"line {i:04d}" for i in range(20)])
    h.start()
    h.wait(lambda: h.ledger.snapshot().events.get("files_closed_inactive", 0) >= 1)
    shutil.copyfile(log, h.root / "backup.log")
    h.wait(lambda: h.ledger.snapshot().events.get("copy_skipped") == 1)
    h.settle()
    assert len(h.sink.lines) == 20
    assert h.ledger.snapshot().bytes_skipped.get("copy") == log.stat().st_size


def test_truncate_without_copy_counts_unread_bytes(h: Harness) -> None:
    """A truncation restarts at 0; nothing twice."""
    log = h.root / "app.log"
    write(log, *[f"first {i}" for i in range(50)])
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 50)
    with log.open("r+b") as f:
        f.truncate(0)
    h.wait(lambda: h.ledger.snapshot().events.get("files_truncated") == 1)
    write(log, "fresh 1", "fresh 2")
    got = h.wait_lines(52)
    assert got[-2:] == [b"fresh 1", b"fresh 2"]
    assert len(got) == len(set(got)) == 52
    assert h.ledger.snapshot().events.get("files_truncated") == 1


def test_truncate_then_rewrite_past_old_offset(h: Harness) -> None:
    """Truncated and rewritten longer than before between two looks: new content from 0."""
    log = h.root / "app.log"
    write(log, "short old line")
    h.start(poll_interval=0.5)
    h.wait(lambda: len(h.sink.lines) >= 1)
    tmp = h.root / "tmp.txt"
    write(tmp, *[f"new content {i}" for i in range(20)])
    with log.open("r+b") as f:  # same inode, new bytes, longer than the old offset
        f.truncate(0)
        f.write(tmp.read_bytes())
    got = h.wait_lines(21)
    assert got == [b"short old line", *[b"new content %d" % i for i in range(20)]]


def test_delete_and_recreate(h: Harness) -> None:
    """A deleted then recreated path is read from 0 as a new file."""
    log = h.root / "app.log"
    write(log, "gen1 a", "gen1 b")
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 2)
    log.unlink()
    write(log, "gen2 a")
    assert h.wait_lines(3) == [b"gen1 a", b"gen1 b", b"gen2 a"]


def test_clean_restart_continues_exactly(h: Harness) -> None:
    """Stop, append, start: the new lines once, the old ones never again."""
    log = h.root / "app.log"
    write(log, "one", "two")
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 2)
    h.stop()
    write(log, "three")
    h.start()
    assert h.wait_lines(3) == [b"one", b"two", b"three"]


def test_partial_line_across_restart(h: Harness) -> None:
    """'partial', stop, restart, ' line\\n': exactly one record 'partial line'."""
    log = h.root / "app.log"
    log.write_bytes(b"partial")
    h.start()
    h.opened()
    h.settle()
    h.stop()
    assert h.sink.lines == []
    write(log, " line")
    h.start()
    assert h.wait_lines(1) == [b"partial line"]


def test_crash_restart_skips_but_never_repeats(h: Harness) -> None:
    """After a crash the reserved position is used: nothing twice, the gap counted."""
    log = h.root / "app.log"
    write(log, *[f"c {i}" for i in range(100)])
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 100)
    h.crash()
    write(log, *[f"d {i}" for i in range(1000)])
    h.ledger = Ledger()
    h.sink.ledger = h.ledger
    h.start()
    h.opened()
    h.settle()
    got = h.sink.lines
    assert len(got) == len(set(got))
    lost = h.ledger.snapshot().bytes_lost.get("lost_on_crash", 0)
    assert lost > 0
    assert len(got) < 1100


def test_corrupt_registry_starts_at_end_and_keeps_a_copy(h: Harness) -> None:
    """A corrupt registry is kept aside, counted, and existing files start at their end."""
    log = h.root / "app.log"
    write(log, "already shipped once")
    h.state.mkdir()
    (h.state / "registry.json").write_text("{not json")
    h.start()
    h.opened()
    write(log, "new")
    assert h.wait_lines(1) == [b"new"]
    assert h.ledger.snapshot().events.get("registry_reset") == 1
    assert list(h.state.glob("registry.json.corrupt-*"))


def test_registry_file_is_versioned_json(h: Harness) -> None:
    """The registry on disk is small versioned JSON with identity and offset."""
    write(h.root / "app.log", "x")
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 1)
    h.stop()
    doc = json.loads((h.state / "registry.json").read_text())
    assert doc["version"] == 1
    (entry,) = doc["files"]
    assert entry["offset"] == 2
    assert {"dev", "ino", "fp", "fp_len", "path"} <= set(entry)


def test_symlink_outside_roots_is_never_read(harness: MakeHarness, tmp_path: Path) -> None:
    """A link whose target is outside the input's roots is counted and never opened."""
    h = harness(follow_symlinks=True)
    root = h.root
    outside = tmp_path / "secret.txt"
    write(outside, "secret")
    (root / "evil.log").symlink_to(outside)
    write(root / "ok.log", "fine")
    h.start()
    assert h.wait_lines(1) == [b"fine"]
    assert h.ledger.snapshot().events.get("symlink_outside_roots", 0) >= 1


def test_long_line_truncated_neighbours_intact(harness: MakeHarness) -> None:
    """A line over max_line_bytes is truncated and counted; neighbours arrive intact."""
    h = harness(max_line_bytes=1024)
    root = h.root
    h.start()
    with (root / "a.log").open("wb") as f:
        f.write(b"before\n" + b"L" * 100_000 + b"\nafter\n")
    assert h.wait_lines(3) == [b"before", b"L" * 1024, b"after"]
    assert h.ledger.snapshot().events.get("lines_truncated") == 1


def test_many_files_with_a_low_open_file_bound(harness: MakeHarness) -> None:
    """More files than max_open_files: idle ones are closed to make room; all lines arrive."""
    h = harness()
    root = h.root
    for i in range(60):
        write(root / f"f{i:03d}.log", f"file {i} line 1", f"file {i} line 2")
    h.start(max_open_files=8)
    got = h.wait_lines(120, timeout=20)
    assert len(got) == len(set(got)) == 120


def test_multiline_joins_stack_traces(harness: MakeHarness) -> None:
    """With multiline, a stack trace is one record; the last one goes out after timeout."""
    h = harness(multiline={"start_pattern": r"^\d{4}-", "timeout": 0.2})
    root = h.root
    h.start()
    write(
        root / "app.log",
        "2026-01-01 boom",
        "Traceback (most recent call last):",
        '  File "x.py", line 1',
        "ValueError: no",
        "2026-01-01 next",
    )
    assert h.wait_lines(2) == [
        b'2026-01-01 boom\nTraceback (most recent call last):\n  File "x.py", line 1\n'
        b"ValueError: no",
        b"2026-01-01 next",
    ]


def test_ignore_older_files_are_not_opened(harness: MakeHarness) -> None:
    """A file not modified for ignore_older is never opened; a fresh one is read."""
    h = harness(ignore_older=3600)
    root = h.root
    old = root / "old.log"
    write(old, "stale")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write(root / "new.log", "fresh")
    h.start()
    assert h.wait_lines(1) == [b"fresh"]
    assert h.ledger.snapshot().events.get("files_opened") == 1


def test_close_inactive_then_reopen_on_change(harness: MakeHarness) -> None:
    """An idle file is closed after close_inactive and reopened, where it was, when it grows."""
    h = harness(close_inactive=0.2)
    root = h.root
    log = root / "app.log"
    write(log, "one")
    h.start()
    # The gauge is set at the end of the round that counts the close: wait for both.
    h.wait(
        lambda: (
            h.ledger.snapshot().events.get("files_closed_inactive", 0) >= 1
            and h.ledger.snapshot().gauges.get("files_watched") == 0
        )
    )
    write(log, "two")
    assert h.wait_lines(2) == [b"one", b"two"]
    assert h.ledger.snapshot().events.get("files_opened", 0) >= 2


def test_unwatchable_directory_is_counted_and_polled(tmp_path: Path) -> None:
    """A root that appears after start is picked up by the rescan (poll fallback)."""
    root = tmp_path / "later"
    h = Harness(root, tmp_path / "state").start()
    try:
        root.mkdir()
        write(root / "a.log", "late dir")
        assert h.wait_lines(1) == [b"late dir"]
    finally:
        h.stop()


def test_backlog_through_a_tiny_queue_drops_nothing(tmp_path: Path) -> None:
    """While the consumer keeps taking, a backlog far larger than the queue waits in the
    file: every line arrives once, in order, and nothing is dropped."""
    from shipper.config import QueueConfig  # noqa: PLC0415
    from shipper.queue import DropQueue  # noqa: PLC0415

    root = tmp_path / "logs"
    root.mkdir()
    write(root / "big.log", *[f"line {i:06d} " + "x" * (i % 50) for i in range(20_000)])
    ledger = Ledger()
    queue = DropQueue(QueueConfig(max_lines=500, max_bytes=64 * 1024), ledger)
    got: list[bytes] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set():
            for c in queue.take(100, 1 << 20, 0.05):
                got.extend(c.lines)
                ledger.sent(len(c.lines), c.nbytes)
                queue.delivered()

    t = threading.Thread(target=consume)
    t.start()
    registry = Registry(str(tmp_path / "registry.json"), 4096, 3600)
    tailer = Tailer(
        [InputConfig(paths=[str(root / "*.log")], start_at="beginning")],
        TailConfig(poll_interval=0.05),
        registry=registry,
        offer=queue.offer,
        put=queue.put,
        wait_for_room=queue.wait_for_room,
        ledger=ledger,
        log=get_logger(),
    )
    tailer.start()
    try:
        wait_until(lambda: len(got) >= 20_000, 30, "20,000 lines")
    finally:
        tailer.stop()
        done.set()
        t.join(5)
    assert got == [b"line %06d " % i + b"x" * (i % 50) for i in range(20_000)]
    s = ledger.snapshot()
    assert sum(s.dropped_lines.values()) == 0
    assert s.balanced


def test_partial_last_line_of_a_rotated_file_is_shipped_once(h: Harness) -> None:
    """A rotated file's last line without newline is shipped once, after rotate_wait."""
    log = h.root / "app.log"
    log.write_bytes(b"whole\nno newline")
    h.start()
    h.wait(lambda: len(h.sink.lines) >= 1)
    os.rename(log, h.root / "app.log.1")
    write(log, "new file")
    got = h.wait_lines(3, timeout=10)
    assert sorted(got) == [b"new file", b"no newline", b"whole"]
    assert h.ledger.snapshot().events.get("partial_lines_flushed") == 1
    assert h.tailer is not None
    rescans = h.tailer.rescans
    h.wait(lambda: h.tailer is not None and h.tailer.rescans >= rescans + 2)
    h.settle()  # rescans saw app.log.1 again: known, never re-read
    assert len(h.sink.lines) == 3
