"""Tailing against the real broker with real files, Debian's logrotate, signals and limits.

Every line carries a unique sequence number, so what arrived can be compared with what was
written: duplicates, gaps, and whether each gap is one the shipper counted.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, free_port
from tests.integration.conftest import Shipper, Start, append, base_config, ledger_from_metrics
from tests.support.readback import end_offsets, read_topic
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


LOGROTATE = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
needs_logrotate = pytest.mark.skipif(LOGROTATE is None, reason="logrotate is not installed")
KiB = 1024
MiB = 1024 * 1024


# -- numbered lines and what arrived ----------------------------------------------------------
def numbered(tag: bytes, seq: int) -> bytes:
    """The line number ``seq`` of stream ``tag``: unique, and rebuildable from its number."""
    return b"%s %09d %s" % (tag, seq, b"x" * (seq % 41))


@dataclass
class Audit:
    """What arrived of the lines ``numbered(tag, 0..written-1)``."""

    written: int
    delivered: int = 0
    duplicates: int = 0
    foreign: list[bytes] = field(default_factory=list)  # records that are no whole line
    missing: list[int] = field(default_factory=list)

    def missing_bytes(self, tag: bytes) -> int:
        """Bytes the missing lines took in the file (newline included)."""
        return sum(len(numbered(tag, i)) + 1 for i in self.missing)

    def figures(self) -> str:
        return (
            f"written={self.written} delivered={self.delivered} "
            f"duplicates={self.duplicates} missing={len(self.missing)} "
            f"foreign={len(self.foreign)}"
        )


def audit(records: list[bytes], tag: bytes, written: int) -> Audit:
    """Compare the records of stream ``tag`` with the ``written`` lines; a record that is
    no whole line of any stream (a fragment) counts as foreign."""
    a = Audit(written)
    seen: Counter[int] = Counter()
    for rec in records:
        parts = rec.split(b" ", 2)
        seq = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        if seq < 0 or rec != numbered(parts[0], seq):
            a.foreign.append(rec)
        elif parts[0] != tag:
            continue
        elif seq >= written:
            a.foreign.append(rec)
        else:
            seen[seq] += 1
    a.delivered = sum(seen.values())
    a.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    a.missing = [i for i in range(written) if i not in seen]
    return a


def topic_records(
    broker: Broker, topic: str, at_least: int = 0, timeout: float = 120
) -> list[bytes]:
    """Every record of ``topic``, read once the broker holds at least ``at_least`` of them.

    Callers pass the count the shipper's ledger says it sent (after waiting for the tailer
    to have polled again), so the topic cannot grow past it; with acks=0 the last batches
    may still be on their way, which is what the wait is for.
    """
    wait_until(
        lambda: sum(end_offsets(broker.bootstrap, topic).values()) >= at_least,
        timeout,
        f"{at_least} records in {topic}",
        interval=0.2,
    )
    parts = read_topic(broker.bootstrap, topic, timeout=timeout)
    return [v for p in sorted(parts) for v in parts[p]]


def settle(
    s: Shipper, expect_read: int, timeout: float = 90, quiet_polls: int = 30
) -> dict[str, Any]:
    """Wait until nothing is queued and ``expect_read`` lines were read, or reading stopped:
    the tailer polled every file ``quiet_polls`` times without reading a line. Return the
    ledger."""
    last = {"read": -1, "polls": 0}

    def settled(led: dict[str, Any]) -> bool:
        polls = led["events"].get("tail_polls", 0)
        if led["read"] != last["read"]:
            last.update(read=led["read"], polls=polls)
        done = led["read"] >= expect_read or polls - last["polls"] >= quiet_polls
        return led["queued"] == 0 and done

    return s.wait_for(settled, timeout, f"{expect_read} lines read, or reading stopped")


# -- load: a writer and logrotate ------------------------------------------------------------
class Writer(threading.Thread):
    """Appends numbered lines to ``path`` at ``rate`` lines/s in 10 ms batches.

    With ``reopen`` it behaves like an app told to reopen its log after a rotation: when
    the path names another file it switches to it (never creating it: that is logrotate's
    job). Without, it keeps its descriptor (an app under copytruncate).
    """

    def __init__(self, path: Path, tag: bytes, rate: int, reopen: bool) -> None:
        super().__init__(name=f"writer-{tag.decode()}", daemon=True)
        self.path = path
        self.tag = tag
        self.rate = rate
        self.reopen = reopen
        self.written = 0
        self.halt = threading.Event()

    def run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        t0 = time.monotonic()
        try:
            while not self.halt.is_set():
                due = int((time.monotonic() - t0) * self.rate)
                if due > self.written:
                    data = b"".join(numbered(self.tag, i) + b"\n" for i in range(self.written, due))
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    self.written = due
                if self.reopen:
                    fd = self._reopened(fd)
                time.sleep(0.01)  # the writer's pace (batches of 10 ms), not a wait
        finally:
            os.close(fd)

    def _reopened(self, fd: int) -> int:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return fd  # rotated, not yet created: keep writing to the old file
        if st.st_ino == os.fstat(fd).st_ino:
            return fd
        try:
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            return fd
        os.close(fd)
        return new

    def finish(self) -> int:
        """Stop writing; return the number of lines written."""
        self.halt.set()
        self.join(10)
        return self.written


class Logrotate(threading.Thread):
    """Runs the real logrotate with its own config and state file every ``interval`` s."""

    def __init__(self, log: Path, workdir: Path, mode: str, interval: float = 0.2) -> None:
        super().__init__(name="logrotate", daemon=True)
        self.conf = workdir / "logrotate.conf"
        self.state = workdir / "logrotate.state"
        self.conf.write_text(
            f"{log} {{\n    size 256k\n    rotate 1000\n    {mode}\n"
            "    nocompress\n    missingok\n}\n"
        )
        self.interval = interval
        self.runs = 0
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            assert LOGROTATE is not None
            r = subprocess.run(
                [LOGROTATE, "-s", str(self.state), str(self.conf)],
                capture_output=True,
                check=False,
                timeout=30,
            )
            self.runs += 1
            if r.returncode:
                self.failures.append(r.stderr.decode(errors="replace")[-500:])
            self.halt.wait(self.interval)

    def finish(self) -> None:
        self.halt.set()
        self.join(30)


def lines_on_disk(logs: Path, pattern: str, tag: bytes) -> tuple[set[int], set[int]]:
    """Numbers of the whole ``tag`` lines in the files matching ``pattern``, and of the
    first line of each of those files."""
    found: set[int] = set()
    firsts: set[int] = set()
    for f in logs.glob(pattern):
        seqs = []
        for ln in f.read_bytes().split(b"\n"):
            parts = ln.split(b" ", 2)
            if len(parts) > 1 and parts[0] == tag and parts[1].isdigit():
                seq = int(parts[1])
                if ln == numbered(tag, seq):
                    seqs.append(seq)
        found.update(seqs)
        firsts.update(seqs[:1])
    return found, firsts


def rotation_config(
    kafka: Broker, topic: str, tmp_path: Path, logs: Path, **over: Any
) -> dict[str, Any]:
    """A config for logs that rotate quickly: the glob includes rotated names."""
    return base_config(
        kafka,
        topic,
        tmp_path,
        [str(logs / "app.log*")],
        tail={"rescan_interval": "500ms", "poll_interval": "100ms", "rotate_wait": "1s"},
        queue={"max_lines": 1_000_000, "max_bytes": "256MiB"},
        **over,
    )


# -- 1, 2: logrotate under load ----------------------------------------------------------------
def run_logrotate_under_load(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, mode: str
) -> tuple[Audit, dict[str, Any], dict[str, Any], set[int], set[int]]:
    """Write 20,000 lines/s for 30 s while logrotate rotates in ``mode``; return the audit,
    the settled ledger, the final one (at stop), the numbers of the lines still on disk and
    of each file's first."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    s = start_shipper(rotation_config(kafka, topic, tmp_path, logs))
    writer = Writer(log, b"r", 20_000, reopen=mode == "create")
    rot = Logrotate(log, tmp_path, mode)
    writer.start()
    rot.start()
    time.sleep(30)  # the load's duration: what is measured, not a wait
    written = writer.finish()
    rot.finish()
    led = settle(s, written, timeout=120)
    # acks=0: what a stall on a loaded machine left unconfirmed may never arrive.
    records = topic_records(kafka, topic, led["confirmed"])
    assert s.stop() == 0
    final = s.final_ledger()
    a = audit(records, b"r", written)
    on_disk, firsts = lines_on_disk(logs, "app.log*", b"r")
    rotated = len(list(logs.glob("app.log.*")))
    print(
        f"[logrotate {mode}] {a.figures()} rotated_files={rotated} "
        f"logrotate_runs={rot.runs} logrotate_failures={len(rot.failures)}"
    )
    dropped = {k: v for k, v in led["dropped"].items() if v}
    print(
        f"[logrotate {mode}] dropped={dropped} unconfirmed={final['unconfirmed']} "
        f"lost_bytes={led['lost_bytes']} "
        f"missing_bytes={a.missing_bytes(b'r')} "
        f"missing_not_on_disk={sum(1 for i in a.missing if i not in on_disk)} "
        f"events={led['events']}"
    )
    assert final["balanced"] is True
    return a, led, final, on_disk, firsts


@pytest.mark.slow
@needs_logrotate
def test_logrotate_create_every_line_once(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """logrotate (create, size 256k) every 0.2 s under 20,000 lines/s for 30 s: every line
    arrives exactly once."""
    a, led, final, _, _ = run_logrotate_under_load(kafka, topic, tmp_path, start_shipper, "create")
    assert a.duplicates == 0
    assert a.foreign == []
    # None missing, unless a stall left lines unconfirmed (counted: may not have arrived).
    assert len(a.missing) <= final["lines_unconfirmed"], (
        f"{len(a.missing)} lines missing, first {a.missing[:10]}"
    )
    assert sum(led["dropped"].values()) == 0
    assert led["events"].get("files_rotated", 0) > 50


@pytest.mark.slow
@needs_logrotate
def test_logrotate_copytruncate_never_twice(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """logrotate (copytruncate) under the same load: no line twice; a missing line that
    survives on disk is covered by ``truncated_unread``; any other was destroyed by
    logrotate itself, written between its copy and its truncation. Every copy is resumed
    where reading stopped, or (its truncation seen later than ``rotate_wait`` after the
    copy stopped growing, on a loaded machine) skipped whole and counted, never read."""
    a, led, final, on_disk, firsts = run_logrotate_under_load(
        kafka, topic, tmp_path, start_shipper, "copytruncate"
    )
    assert a.duplicates == 0
    # A copy that caught a line half-written ends with its head: shipped once when the
    # copy is closed (partial_lines_flushed), in place of a line lost with the truncation.
    lost_lines = [numbered(b"r", i) for i in a.missing]
    heads = [r for r in a.foreign if any(ln.startswith(r) for ln in lost_lines)]
    assert heads == a.foreign
    assert len(heads) <= led["events"].get("partial_lines_flushed", 0)
    kept = [i for i in a.missing if i in on_disk]
    kept_bytes = sum(len(numbered(b"r", i)) + 1 for i in kept)
    # Counted when a copy is found, when none turned up in time, or at the latest at stop.
    # Lines left unconfirmed by a stall (acks=0) may be missing too: counted, with newlines.
    unconfirmed = final["bytes_sent"] - final["bytes_confirmed"] + final["lines_unconfirmed"]
    assert kept_bytes <= final["bytes_lost"].get("truncated_unread", 0) + unconfirmed, (
        f"{len(kept)} lines still on disk never arrived, first {kept[:10]}"
    )
    # The others end where the truncated file starts again: logrotate's own window.
    gone = set(a.missing) - set(kept)
    ends = [i for i in gone if i + 1 not in gone]
    assert all(i + 1 in firsts for i in ends), sorted(i for i in ends if i + 1 not in firsts)
    assert sum(led["dropped"].values()) == 0
    copies = led["events"].get("copy_resumed", 0) + led["events"].get("copy_skipped", 0)
    assert copies == led["events"].get("files_truncated", 0) > 50


# -- 3: a rotated file deleted at once -------------------------------------------------------
def test_rotated_file_deleted_while_lagging(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """200,000 lines written while the shipper is frozen (SIGSTOP), the file renamed and
    unlinked, a new one created: once it runs again, nothing is lost and none twice."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"old", 0)])
    s = start_shipper(rotation_config(kafka, topic, tmp_path, logs))
    s.wait_for(lambda led: led["sent"] == 1, 30, "first line")
    n = 200_000
    s.proc.send_signal(signal.SIGSTOP)  # the shipper lags: it has read nothing of what follows
    try:
        with log.open("ab") as f:
            f.write(b"".join(numbered(b"old", j) + b"\n" for j in range(1, n)))
        os.rename(log, logs / "app.log.1")
        os.unlink(logs / "app.log.1")
        append(log, [numbered(b"new", i) for i in range(1000)])
    finally:
        s.proc.send_signal(signal.SIGCONT)
    led = settle(s, n + 1000, timeout=120)
    records = topic_records(kafka, topic, n + 1000)
    old, new = audit(records, b"old", n), audit(records, b"new", 1000)
    print(f"[deleted while lagging] old: {old.figures()} new: {new.figures()}")
    assert (old.duplicates, old.missing, old.foreign) == (0, [], [])
    assert (new.duplicates, new.missing, new.foreign) == (0, [], [])
    assert sum(led["dropped"].values()) == 0
    assert led["events"].get("files_rotated", 0) >= 1
    assert s.stop() == 0


@needs_logrotate
@pytest.mark.parametrize("rotations", [1, 2])
def test_copytruncate_while_lagging_never_twice(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, rotations: int
) -> None:
    """The shipper lags (SIGSTOP) while logrotate copies and truncates the file (once, or
    twice with the app writing between) and the app writes more than the file held: when it
    runs again, the first copy starts like what it was reading and the original no longer
    does. That copy is read from where reading stopped (nothing of it twice, the lines
    written after our position once); a later copy and the new content from their start."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    n = 2000
    append(log, [numbered(b"old", i) for i in range(n)])
    s = start_shipper(rotation_config(kafka, topic, tmp_path, logs))
    s.wait_for(lambda led: led["sent"] == n, 30, "the first lines")
    rot = Logrotate(log, tmp_path, "copytruncate")
    assert LOGROTATE is not None
    mid = 3 * n if rotations == 2 else 0
    s.proc.send_signal(signal.SIGSTOP)  # from here on the shipper has seen nothing
    try:
        append(log, [numbered(b"old", i) for i in range(n, 2 * n)])  # unread when copied
        for r in range(rotations):
            if r:  # the next generation, rotated in turn (its copy is app.log.1 now)
                append(log, [numbered(b"mid", i) for i in range(mid)])
            subprocess.run([LOGROTATE, "-f", "-s", str(rot.state), str(rot.conf)], check=True)
            assert (logs / "app.log.1").stat().st_size > 0
            assert log.stat().st_size == 0
        append(log, [numbered(b"new", i) for i in range(3 * n)])  # past where we were
    finally:
        s.proc.send_signal(signal.SIGCONT)
    led = settle(s, 5 * n + mid)
    records = topic_records(kafka, topic, led["sent"])
    old, new = audit(records, b"old", 2 * n), audit(records, b"new", 3 * n)
    between = audit(records, b"mid", mid)
    print(f"[copytruncate x{rotations} while lagging] old: {old.figures()} new: {new.figures()}")
    for a in (old, between, new):
        assert (a.duplicates, a.missing, a.foreign) == (0, [], [])
    assert led["events"].get("copy_resumed") == 1
    assert led["events"].get("files_truncated") == 1
    assert s.stop() == 0


@needs_logrotate
def test_copytruncate_of_a_file_closed_inactive_never_twice(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A quiet log is closed (close_inactive), then logrotate copies and truncates it (the
    nightly rotation of an app that logs rarely). The copy is the old content of a file we
    read although no reader holds it: it is read from where we stopped (the lines written
    just before the rotation once, none twice), and the new content from its start."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    n = 500
    append(log, [numbered(b"old", i) for i in range(n)])
    cfg = rotation_config(kafka, topic, tmp_path, logs)
    cfg["inputs"][0]["close_inactive"] = "1s"
    s = start_shipper(cfg)
    s.wait_for(
        lambda led: led["sent"] == n and led["events"].get("files_closed_inactive", 0) >= 1,
        30,
        "the lines read and the quiet file closed",
    )
    rot = Logrotate(log, tmp_path, "copytruncate")
    assert LOGROTATE is not None
    s.proc.send_signal(signal.SIGSTOP)  # the lines written just before the rotation: unread
    try:
        append(log, [numbered(b"old", i) for i in range(n, n + 100)])
        subprocess.run([LOGROTATE, "-f", "-s", str(rot.state), str(rot.conf)], check=True)
        assert log.stat().st_size == 0
    finally:
        s.proc.send_signal(signal.SIGCONT)
    # Nothing new in the original yet: only the copy tells of the rotation.
    s.wait_for(lambda led: led["read"] >= n + 100, 30, "the copy")
    append(log, [numbered(b"new", i) for i in range(n)])
    led = settle(s, 2 * n + 100)
    records = topic_records(kafka, topic, led["sent"])
    old, new = audit(records, b"old", n + 100), audit(records, b"new", n)
    print(f"[copytruncate of a closed file] old: {old.figures()} new: {new.figures()}")
    for a in (old, new):
        assert (a.duplicates, a.missing, a.foreign) == (0, [], [])
    assert led["events"].get("copy_resumed") == 1
    assert s.stop() == 0


# -- 4: identity: truncate-then-rewrite and inode reuse -----------------------------------------
def test_truncate_then_rewrite_past_old_offset(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """Same inode truncated and rewritten longer than before, live and while stopped: the
    new content is read from offset 0 and no line arrives twice."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"g1", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 100, 30, "gen 1")
    ino = log.stat().st_ino
    with log.open("r+b") as f:  # one write: truncation and longer new content
        f.truncate(0)
        f.write(b"".join(numbered(b"g2", i) + b"\n" for i in range(300)))
    s.wait_for(lambda led: led["sent"] == 400, 30, "gen 2")
    assert s.stop() == 0
    with log.open("r+b") as f:  # while stopped: the registry holds gen 2's offset
        f.truncate(0)
        f.write(b"".join(numbered(b"g3", i) + b"\n" for i in range(600)))
    assert log.stat().st_ino == ino
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 600, 30, "gen 3")
    assert_three_generations_once(s, kafka, topic)
    assert s.stop() == 0


def assert_three_generations_once(s: Shipper, kafka: Broker, topic: str) -> None:
    """Once the tailer has looked at the file again without sending more than gen 3's 600
    lines, the topic holds generations g1 (100 lines), g2 (300) and g3 (600) of one path,
    each line exactly once, and nothing else."""
    assert s.rounds(polls=3, rescans=1)["sent"] == 600
    records = topic_records(kafka, topic, 1000)
    for tag, n in ((b"g1", 100), (b"g2", 300), (b"g3", 600)):
        a = audit(records, tag, n)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (tag, a.figures())
    assert len(records) == 1000


def reuse_inode(directory: Path, ino: int, tries: int = 2000) -> Path | None:
    """Create files in ``directory`` until one gets inode ``ino``; return it (others removed)."""
    made: list[Path] = []
    hit = None
    try:
        for i in range(tries):
            p = directory / f"probe-{i}.tmp"
            p.touch()
            if p.stat().st_ino == ino:
                hit = p
                break
            made.append(p)
    finally:
        for p in made:
            p.unlink()
    return hit


def test_delete_and_recreate_with_inode_reuse(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A path deleted and recreated on the very same inode, live and while stopped: each
    generation is read once from offset 0, even when longer than the old offset."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"g1", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")], tail={"rotate_wait": "300ms"})
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 100, 30, "gen 1")
    ino = log.stat().st_ino
    log.unlink()
    # The inode is free only once the shipper has closed the deleted file.
    s.wait_for(lambda led: led["events"].get("files_closed", 0) >= 1, 30, "deleted file closed")
    probe = reuse_inode(logs, ino)
    if probe is None:
        pytest.skip(f"the filesystem did not hand out inode {ino} again")
    probe.write_bytes(b"".join(numbered(b"g2", i) + b"\n" for i in range(300)))
    probe.rename(log)
    s.wait_for(lambda led: led["sent"] == 400, 30, "gen 2")
    assert s.stop() == 0
    log.unlink()  # while stopped: the registry still knows this inode at gen 2's offset
    probe = reuse_inode(logs, ino)
    if probe is None:
        pytest.skip(f"the filesystem did not hand out inode {ino} a second time")
    probe.write_bytes(b"".join(numbered(b"g3", i) + b"\n" for i in range(600)))
    probe.rename(log)
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 600, 30, "gen 3")
    assert_three_generations_once(s, kafka, topic)
    assert s.ledger()["events"].get("identity_changed", 0) >= 1
    assert s.stop() == 0


# -- 5: a partial line across a restart ------------------------------------------------------
def test_partial_line_across_restart(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """'partial', SIGTERM, restart, ' line\\n': exactly one record 'partial line'."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(b"partial")
    cfg = base_config(kafka, topic, tmp_path, [str(log)])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["events"].get("files_opened", 0) >= 1, 30, "file opened")
    assert s.rounds(polls=3)["read"] == 0  # looked at again: the partial line waits
    assert s.stop() == 0
    assert s.final_ledger()["lines_read"] == 0
    append(log, b" line\n")
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] >= 1, 30, "the line")
    assert s.rounds(polls=3)["sent"] == 1
    assert topic_records(kafka, topic, 1) == [b"partial line"]
    assert s.stop() == 0


# -- 6: many files, few descriptors -----------------------------------------------------------
@pytest.mark.slow
def test_500_files_under_a_low_open_files_limit(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """500 files under RLIMIT_NOFILE 256 with max_open_files 200: every file's lines
    arrive once and the ledger balances."""
    logs = tmp_path / "logs"
    logs.mkdir()
    per = 20
    files = [logs / f"f{i:03d}.log" for i in range(500)]
    for i, f in enumerate(files[:300]):
        append(f, [numbered(b"f%03d" % i, j) for j in range(per)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")], tail={"max_open_files": 200})
    s = start_shipper(cfg, prefix=["prlimit", "--nofile=256:256"])
    limits = Path(f"/proc/{s.proc.pid}/limits").read_text()
    assert any(
        ln.startswith("Max open files") and ln.split()[3:5] == ["256", "256"]
        for ln in limits.splitlines()
    ), limits
    for i, f in enumerate(files[300:], 300):
        append(f, [numbered(b"f%03d" % i, j) for j in range(per)])
    for i, f in enumerate(files[:100]):  # files closed for room grow again
        append(f, [numbered(b"f%03d" % i, j) for j in range(per, 2 * per)])
    total = 500 * per + 100 * per
    s.wait_for(lambda led: led["sent"] >= total, 90, "all files sent")
    assert s.rounds(rescans=2)["sent"] == total  # globbed twice more: nothing more arrives
    records = topic_records(kafka, topic, total)
    assert len(records) == total
    for i in range(500):
        a = audit(records, b"f%03d" % i, 2 * per if i < 100 else per)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (i, a.figures())
    led = s.ledger()
    assert led["balanced"]
    assert led["read"] == led["sent"] == total
    assert led["events"].get("files_closed_for_room", 0) > 0
    assert not [e for e in led["events"] if e.startswith("open_failed")], led["events"]
    assert s.stop() == 0


# -- 7: a 10 MiB line ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_10mib_line_between_normal_lines(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, policy: str
) -> None:
    """A 10 MiB line with max_line_bytes 1MiB: its neighbours arrive intact, the policy is
    counted (``lines_truncated`` or ``line_too_long``) and tailing goes on."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    cfg = base_config(kafka, topic, tmp_path, [str(log)])
    cfg["inputs"][0].update(max_line_bytes="1MiB", long_lines=policy)
    s = start_shipper(cfg)
    before = [numbered(b"n", i) for i in range(100)]
    after = [numbered(b"n", i) for i in range(100, 200)]
    with log.open("ab") as f:
        f.write(b"".join(x + b"\n" for x in before))
        for _ in range(10):
            f.write(b"L" * MiB)
            f.flush()
        f.write(b"\n" + b"".join(x + b"\n" for x in after))
    s.wait_for(lambda led: led["read"] >= 201 - (policy == "drop"), 30, "lines read")
    later = [numbered(b"n", i) for i in range(200, 300)]
    append(log, later)
    led = s.wait_for(lambda led: led["read"] >= 301 and led["queued"] == 0, 30, "later lines")
    records = topic_records(kafka, topic, 300)
    normal = [r for r in records if not r.startswith(b"L")]
    long_ = [r for r in records if r.startswith(b"L")]
    assert normal == before + after + later
    print(
        f"[10 MiB line, {policy}] records={len(records)} long records="
        f"{[len(r) for r in long_]} dropped={led['dropped']} events={led['events']}"
    )
    if policy == "truncate":
        assert led["events"].get("lines_truncated") == 1
        # Cut at max_line_bytes, or lower so that one record fits kafka.batch_max_bytes.
        (cut,) = long_
        assert cut == b"L" * len(cut)
        assert 900 * 1024 < len(cut) <= MiB
        assert led["dropped"]["line_too_long"] == 0
    else:
        assert long_ == []
        assert led["dropped"]["line_too_long"] == 1
        assert "lines_truncated" not in led["events"]
    assert led["balanced"]
    assert s.stop() == 0


# -- 8: symlinks and permissions --------------------------------------------------------------
def test_symlink_outside_roots_never_read(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """With follow_symlinks, a link leading outside the roots is counted and never read; a
    link inside them is read once."""
    logs = tmp_path / "logs"
    (logs / "real").mkdir(parents=True)
    outside = tmp_path / "secret.txt"
    append(outside, [b"secret"])
    (logs / "evil.log").symlink_to(outside)
    append(logs / "real" / "target.txt", [b"inside 0"])
    (logs / "inside.log").symlink_to(logs / "real" / "target.txt")
    append(logs / "plain.log", [b"plain 0"])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    cfg["inputs"][0]["follow_symlinks"] = True
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] >= 2, 30, "two lines")
    append(outside, [b"secret 2"])
    led = s.rounds(rescans=2)  # the link is looked at again, and refused again
    assert led["events"].get("symlink_outside_roots", 0) >= 1
    assert sorted(topic_records(kafka, topic, 2)) == [b"inside 0", b"plain 0"]
    assert led["read"] == 2
    assert s.stop() == 0


# Root reads anything; a process whose capability bounding set lacks DAC override cannot
# read a mode-000 file even as root, while it still reads the checkout it runs from.
NO_DAC = [
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
    "--inh-caps",
    "-dac_override,-dac_read_search",
]


def test_unreadable_file_counted_then_read(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A file the process may not read is counted (``open_failed_eacces``), never crashes
    the daemon, and is read once after chmod 644."""
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif shutil.which("setpriv"):
        prefix = NO_DAC
    else:
        pytest.skip("root without setpriv cannot be denied a mode-000 file")
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs / "open.log", [b"open 0"])
    locked = logs / "locked.log"
    append(locked, [b"locked 0", b"locked 1"])
    locked.chmod(0o000)
    try:
        s = start_shipper(base_config(kafka, topic, tmp_path, [str(logs / "*.log")]), prefix=prefix)
        s.wait_for(
            lambda led: led["sent"] >= 1 and led["events"].get("open_failed_eacces", 0) >= 1,
            30,
            "EACCES counted",
        )
        assert s.rounds(polls=3)["read"] == 1  # retried, and refused again
        locked.chmod(0o644)
        s.wait_for(lambda led: led["sent"] >= 3, 30, "the file once readable")
        assert s.rounds(polls=3)["sent"] == 3
        assert sorted(topic_records(kafka, topic, 3)) == [b"locked 0", b"locked 1", b"open 0"]
        assert s.stop() == 0
    finally:
        locked.chmod(0o644)


# -- 9: kill -9 during rotation under load -----------------------------------------------------
def counted_loss(m: dict[str, float]) -> int:
    """File bytes a shipper's metrics say it lost or dropped (a dropped line's newline too)."""
    lost = sum(v for k, v in m.items() if k.startswith("shipper_bytes_lost_total{"))
    dropped = sum(
        v
        for k, v in m.items()
        if k.startswith(("shipper_bytes_dropped_total{", "shipper_lines_dropped_total{"))
    )
    return int(lost + dropped)


@pytest.mark.slow
@needs_logrotate
def test_kill_9_thirty_times_during_rotation(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """kill -9 at random moments, 30 times, while logrotate rotates under load, each
    followed by a restart: no line ever arrives twice, and the bytes of the missing lines
    are covered by what the shipper counted (``lost_on_crash`` and drops) plus what each
    killed process could hold in memory (its queue, two batches, the bytes in flight).

    What a process holds in memory dies with it uncounted: its registry already points past
    those lines. Under load a fresh process often had 40,000 lines queued while its sender
    was still connecting, so the memory bounds are kept small here and counted per kill.
    """
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    cfg = rotation_config(kafka, topic, tmp_path, logs, registry={"reserve": "64KiB"})
    cfg["queue"].update(max_lines=1000, max_bytes=32 * KiB)
    cfg["kafka"].update(batch_max_lines=500, batch_max_bytes=16 * KiB, max_in_flight_bytes=64 * KiB)
    cfg["inputs"][0]["max_line_bytes"] = 4 * KiB
    # File bytes (payload and newline) a killed process can hold in memory: a full queue,
    # the take the sender holds and the batch it is writing, and the bytes in flight.
    in_memory = 32 * KiB + 1000 + 2 * (16 * KiB + 500) + 64 * KiB
    writer = Writer(log, b"k", 10_000, reopen=True)
    rot = Logrotate(log, tmp_path, "create")
    writer.start()
    rot.start()
    counted = 0
    lost: Counter[str] = Counter()
    t0 = time.monotonic()
    try:
        for _ in range(30):
            cfg["metrics"]["listen"] = f"127.0.0.1:{free_port()}"
            s = start_shipper(cfg)
            time.sleep(rng.uniform(0.1, 0.8))  # a random moment to kill at: the test itself
            m = s.metrics()
            s.kill()
            counted += counted_loss(m)
            lost.update(ledger_from_metrics(m)["lost_bytes"])
    finally:
        written = writer.finish()
        rot.finish()
    cfg["metrics"]["listen"] = f"127.0.0.1:{free_port()}"
    s = start_shipper(cfg)
    settle(s, written, timeout=60)  # not all can arrive: waits until reading stops
    m = s.metrics()
    counted += counted_loss(m)
    lost.update(ledger_from_metrics(m)["lost_bytes"])
    assert s.stop() == 0
    assert s.final_ledger()["balanced"] is True
    records = topic_records(kafka, topic, 0)
    a = audit(records, b"k", written)
    print(
        f"[kill -9 x30] seed={seed} {a.figures()} missing_bytes={a.missing_bytes(b'k')} "
        f"counted_bytes={counted} in_memory_bound={30 * in_memory} lost_bytes={dict(lost)} "
        f"rotated_files={len(list(logs.glob('app.log.*')))} "
        f"seconds={time.monotonic() - t0:.0f}"
    )
    assert a.duplicates == 0
    assert a.foreign == []
    assert a.missing_bytes(b"k") <= counted + 30 * in_memory


# -- 10: the registry on a full filesystem --------------------------------------------------
@pytest.fixture(name="small_fs")
def fixture_small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the filesystem is full."""
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def test_registry_on_a_full_filesystem(
    kafka: Broker, topic: str, tmp_path: Path, small_fs: Path, start_shipper: Start
) -> None:
    """Registry on a full filesystem: lines are dropped ``registry_unwritable``, /health
    says degraded, nothing arrives twice, and once space is back it recovers by itself."""
    logs = tmp_path / "logs"
    logs.mkdir()
    append(logs / "app.log", [numbered(b"before", 0)])
    cfg = base_config(
        kafka,
        topic,
        tmp_path,
        [str(logs / "*.log")],
        registry={"path": str(small_fs / "registry.json")},
    )
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 1, 30, "first line")
    assert s.health()[1]["status"] == "running"
    fill(small_fs / "filler")
    new = logs / "new.log"  # a new file needs a registry write before its lines go
    append(new, [numbered(b"full", i) for i in range(50)])
    led = s.wait_for(
        lambda led: led["dropped"].get("registry_unwritable", 0) == 50,
        30,
        "registry_unwritable drops",
    )
    code, doc = s.health()
    assert (code, doc["status"], doc["registry_writable"]) == (200, "degraded", False)
    (small_fs / "filler").unlink()
    wait_until(lambda: s.health()[1]["status"] == "running", 10, "recovery", 0.1, s.logs)
    append(new, [numbered(b"back", i) for i in range(50)])
    s.wait_for(lambda led: led["sent"] == 51, 30, "lines flow again")
    led = s.rounds(polls=3)
    assert led["sent"] == 51
    records = topic_records(kafka, topic, 51)
    back = audit(records, b"back", 50)
    assert (back.duplicates, back.missing, back.foreign) == (0, [], [])
    assert audit(records, b"full", 50).delivered == 0
    assert len(records) == 51
    assert led["balanced"]
    assert s.stop() == 0
    assert s.final_ledger()["dropped"] == {"registry_unwritable": 50}
