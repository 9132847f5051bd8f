"""The tailer thread: discovers files, follows them through rotation and truncation, reads them
in large chunks, cuts lines and hands whole chunks of lines to the queue.

Identity of a file is its device and inode plus a fingerprint of its first bytes, so inode
reuse, delete-and-recreate and truncate-then-rewrite are told apart from growth. Nothing is
handed on before the registry has made its position durable (see ``registry``), so a restart
never re-reads a line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shipper.config import InputConfig, TailConfig
from shipper.ledger import Ledger
from shipper.log import RateLimiter
from shipper.tail.discovery import ChangeSet, Matcher, Watcher, base_dir
from shipper.tail.lines import LineSplitter
from shipper.tail.multiline import Multiline
from shipper.tail.registry import Entry, Registry, RegistryCorruptError

__all__ = ["Tailer"]

Put = Callable[[list[bytes], int, str], None]
Offer = Callable[[list[bytes], int, str], int]
Room = Callable[[], int]


def _fp(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _line_start(fd: int, off: int, size: int) -> tuple[int, bool]:
    """The first line start at or after ``off``; ``(size, True)`` if that line is not
    complete yet (its rest is to be skipped when it arrives)."""
    if off == 0 or os.pread(fd, 1, off - 1) == b"\n":
        return off, False
    while off < size:
        data = os.pread(fd, 65536, off)
        if not data:
            break
        nl = data.find(b"\n")
        if nl >= 0:
            return off + nl + 1, False
        off += len(data)
    return off, True


@dataclass(slots=True)
class _Orphan:
    """The identity a file had before it was truncated (for copytruncate's copy)."""

    fp_len: int
    fp: str
    offset: int
    lost: int
    expires: float


@dataclass(slots=True, eq=False)
class _Cursor:
    """One open file."""

    path: str
    inp: int
    fd: int
    entry: Entry
    read_off: int
    splitter: LineSplitter
    size_seen: int = 0
    last_growth: float = 0.0
    rotated: bool = False
    behind_since: float | None = None
    ml: Multiline | None = None  # joins continuation lines when the input asks for it
    # Lines read but not yet taken by the queue (it was full), and the offset they end at.
    carry: list[bytes] = field(default_factory=list)
    carry_end: int = 0


class Tailer:
    """Owns every open file and the registry; runs on its own thread."""

    def __init__(
        self,
        inputs: list[InputConfig],
        cfg: TailConfig,
        *,
        registry: Registry,
        put: Put,
        room: Room,
        ledger: Ledger,
        log: Any,
        offer: Offer | None = None,
    ) -> None:
        self._inputs = inputs
        self._cfg = cfg
        self._registry = registry
        self._put = put
        self._room = room
        self._offer: Offer = offer or self._put_all
        self.paced = False  # the last round stopped reading because the queue was full
        self._ledger = ledger
        self._log = log
        self._limiter = RateLimiter(10.0)
        self._matchers = [Matcher(i.paths, i.exclude) for i in inputs]
        self._changes = ChangeSet()
        self._watcher = Watcher(self._changes)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_key: dict[str, _Cursor] = {}
        self._by_path: dict[str, _Cursor] = {}  # active (not rotated) cursor of each path
        self._orphans: list[_Orphan] = []
        self._pending_copies: dict[str, float] = {}  # path -> give-up time
        self._retry: set[str] = set()  # paths to try to open again (deferred, unreadable)
        self._initial = True
        self._registry_reset = False
        self.degraded = False

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Load the registry, start watching and start the reading thread."""
        self._load_registry()
        self._registry.start()
        self._watcher.start()
        for m in self._matchers:
            for pattern in m.patterns:
                d, rec = base_dir(pattern)
                self._watcher.ensure(d, rec)
        self._thread = threading.Thread(target=self._run, name="shipper-tailer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading, close every file and save exact positions."""
        self._stop.set()
        self._changes.event.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._watcher.stop()
        for c in list(self._by_key.values()):
            self._close(c, "shutdown")
        if not self._registry.save(exact=True):
            self._log.error("registry_unwritable", path=str(self._registry.path),
                            error=self._registry.last_error)
        self._registry.close()

    @property
    def thread(self) -> threading.Thread | None:
        """The reading thread (for leak checks)."""
        return self._thread

    def _load_registry(self) -> None:
        try:
            self._registry.load()
        except RegistryCorruptError as exc:
            self._registry_reset = True
            self._ledger.event("registry_reset")
            self._log.error("registry_reset", path=str(self._registry.path), error=str(exc),
                            action="starting at the end of existing files")

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        cfg = self._cfg
        next_rescan = 0.0
        next_poll = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_rescan:
                    self._rescan()
                    self._initial = False
                    next_rescan = now + cfg.rescan_interval
                changed = self._changes.drain()
                poll = now >= next_poll
                if poll:
                    next_poll = now + cfg.poll_interval
                self._on_changes(changed, poll)
                busy = self._read_all()
                if self.paced and not busy:
                    time.sleep(0.005)  # the queue is full but draining: look again soon
                    busy = True
                if poll:
                    self._housekeeping(now)
            except Exception as exc:  # noqa: BLE001  # the thread must not die: log, count, go on
                self._ledger.event("tailer_errors")
                self._log.exception("tailer_error", error=str(exc))
                busy = False
                time.sleep(0.5)
            if not busy:
                self._changes.event.wait(cfg.poll_interval)

    def _rescan(self) -> None:
        for m in self._matchers:
            for pattern in m.patterns:
                d, rec = base_dir(pattern)
                if not self._watcher.ensure(d, rec) and os.path.isdir(d):
                    # inotify limits or permissions: the poll and the rescan cover it.
                    self._ledger.event("watch_failed")
                    self._warn("watch_failed", directory=d, error=self._watcher.failed.get(d),
                               fallback="polling")
        for idx, m in enumerate(self._matchers):
            for path in m.scan():
                if path not in self._by_path:
                    self._try_open(path, idx)
        self._ledger.set_gauge("dirs_watched", self._watcher.watched)

    def _on_changes(self, changed: set[str], poll: bool) -> None:
        paths = set(changed)
        if poll:
            paths.update(self._by_path)
            paths.update(self._retry)
            paths.update(self._pending_copies)
        self._retry.clear()
        for path in paths:
            c = self._by_path.get(path)
            if c is not None:
                self._check_rotation(c)
                if self._by_path.get(path) is not None:
                    continue
            for idx, m in enumerate(self._matchers):
                if m.matches(path):
                    self._try_open(path, idx)
                    break

    # -- opening ------------------------------------------------------------------------
    def _try_open(self, path: str, idx: int) -> None:  # noqa: PLR0911  # one exit per reason to skip
        inp = self._inputs[idx]
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._open_failed(path, exc)
            return
        if stat.S_ISLNK(lst.st_mode):
            if not inp.follow_symlinks:
                return
            real = os.path.realpath(path)
            if not self._matchers[idx].inside_roots(real):
                self._ledger.event("symlink_outside_roots")
                self._warn("symlink_outside_roots", path=path, target=real)
                return
        try:
            st = os.stat(path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        key = f"{st.st_dev}:{st.st_ino}"
        if key in self._by_key:
            self._by_key[key].entry.seen = time.time()
            return
        if inp.ignore_older is not None and time.time() - st.st_mtime > inp.ignore_older:
            return
        if len(self._by_key) >= self._cfg.max_open_files and not self._make_room():
            self._ledger.event("open_deferred")
            self._retry.add(path)
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            self._open_failed(path, exc)
            return
        try:
            self._adopt(path, idx, fd, st)
        except OSError as exc:
            os.close(fd)
            self._open_failed(path, exc)

    def _open_failed(self, path: str, exc: OSError) -> None:
        self._retry.add(path)
        reason = errno.errorcode.get(exc.errno or 0, "error").lower()
        self._ledger.event(f"open_failed_{reason}")
        self._warn("file_open_failed", path=path, error=exc.strerror, errno=reason)

    def _adopt(self, path: str, idx: int, fd: int, st: os.stat_result) -> None:
        """Decide where to start reading a newly opened file, and track it."""
        inp = self._inputs[idx]
        fpn = self._cfg.fingerprint_bytes
        head = os.pread(fd, fpn, 0)
        fp_len, fp = len(head), _fp(head)
        size = st.st_size
        now = time.time()
        key = f"{st.st_dev}:{st.st_ino}"
        entry = self._registry.entries.get(key)
        mid_line = False  # resuming inside a line (after a crash)
        # An entry of a file that was empty (fp_len 0) matches anything: no identity.
        if entry is not None and 0 < entry.fp_len <= fp_len and (
                _fp(head[: entry.fp_len]) == entry.fp):
            if entry.restored:
                start, mid_line = self._resume_at(entry, fd, size)
                entry.restored = False
                how = "registry"
            else:
                start = min(entry.exact, size)
                how = "reopened"
        else:
            new = self._new_entry(path, inp, st, fp_len, fp, known=entry is not None)
            if new is None:
                os.close(fd)
                return
            entry, start, how = new
        entry.path = path
        entry.seen = now
        if entry.fp_len < fp_len and _fp(head[: entry.fp_len]) == entry.fp:
            entry.fp_len, entry.fp = fp_len, fp
        c = _Cursor(path=path, inp=idx, fd=fd, entry=entry, read_off=start,
                    splitter=LineSplitter(inp.max_line_bytes, inp.long_lines,
                                          mid_line=mid_line),
                    size_seen=size, last_growth=time.monotonic())
        if inp.multiline is not None:
            m = inp.multiline
            c.ml = Multiline(m.start_pattern, m.max_lines, m.timeout)
        self._by_key[key] = c
        self._by_path[path] = c
        self._pending_copies.pop(path, None)
        self._ledger.event("files_opened")
        self._log.info("file_opened", path=path, offset=start, size=size, start=how)

    def _new_entry(self, path: str, inp: InputConfig, st: os.stat_result, fp_len: int,
                   fp: str, *, known: bool) -> tuple[Entry, int, str] | None:
        """Registry entry and start offset for a file not known by this identity; None
        to wait (a copy of a file being read, or an empty new file)."""
        size = st.st_size
        copy = self._match_copy(path, fp_len, fp, size)
        if copy == "defer":
            return None
        if known:
            self._ledger.event("identity_changed")
        if isinstance(copy, int):
            start, how = copy, "copy"
        elif self._initial and (self._registry_reset or (
                not self._registry.existed and inp.start_at == "end")):
            start, how = size, "end"
        else:
            start, how = 0, "beginning"
        entry = Entry(dev=st.st_dev, ino=st.st_ino, fp_len=fp_len, fp=fp, path=path,
                      durable=start, exact=start, seen=time.time(), restored=False)
        self._registry.entries[entry.key] = entry
        if start:  # on failure the next reserve() retries; nothing goes on before
            self._registry.save()
        return entry, start, how

    def _resume_at(self, entry: Entry, fd: int, size: int) -> tuple[int, bool]:
        """Where to resume a file known from the registry on disk; True if inside a line."""
        start = min(entry.durable, size)
        if start <= entry.exact:
            return start, False
        # After a crash: skip what may have been read, up to the next line start.
        start, mid_line = _line_start(fd, start, size)
        self._ledger.lost_bytes("lost_on_crash", start - entry.exact)
        entry.exact = start
        return start, mid_line

    def _match_copy(self, path: str, fp_len: int, fp: str, size: int) -> int | str | None:
        """Offset to start a copy of a known file at, ``"defer"`` to wait, or None."""
        if fp_len == 0:
            # Nothing to tell it by yet (copytruncate's copy is empty when created): look
            # again once it has bytes, or copied content would be read as new.
            self._retry.add(path)
            return "defer"
        for o in self._orphans:
            if o.fp_len == fp_len and o.fp == fp:
                self._orphans.remove(o)
                self._ledger.event("copy_resumed")
                # The copy ends before what we read when the app wrote between the copy and
                # the truncation: nothing in it is new then. Bytes we saw but neither read
                # nor find in the copy are lost.
                lost = o.offset + o.lost - max(o.offset, size)
                if lost > 0:
                    self._ledger.lost_bytes("truncated_unread", lost)
                    self._warn("bytes_lost", reason="truncated_unread", bytes=lost)
                return min(o.offset, size)
        for c in self._by_key.values():
            if c.entry.fp_len >= fp_len and c.path != path and not c.rotated:
                same = c.entry.fp_len == fp_len and c.entry.fp == fp
                if not same:
                    try:
                        same = _fp(os.pread(c.fd, fp_len, 0)) == fp
                    except OSError:
                        same = False
                if same:
                    # A copy of a file we are reading (copytruncate's first step): wait for
                    # the truncation so the copy is read exactly from where we stopped.
                    give_up = self._pending_copies.setdefault(
                        path, time.monotonic() + self._cfg.rotate_wait)
                    if time.monotonic() < give_up:
                        return "defer"
                    self._ledger.event("copy_skipped")
                    return size
        return None

    def _make_room(self) -> bool:
        """Close the longest-idle file that is not draining a rotation; False if none."""
        idle = [c for c in self._by_key.values() if not c.rotated
                and c.size_seen <= c.read_off]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_growth)
        self._ledger.event("files_closed_for_room")
        self._close(victim, "room")
        return True

    # -- following ----------------------------------------------------------------------
    def _check_rotation(self, c: _Cursor) -> None:
        try:
            st = os.stat(c.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return
        if st is not None and f"{st.st_dev}:{st.st_ino}" == c.entry.key:
            return
        # Renamed away or deleted: keep draining the open descriptor, then close it.
        c.rotated = True
        c.last_growth = time.monotonic()
        del self._by_path[c.path]
        self._ledger.event("files_rotated")
        self._log.info("file_rotated", path=c.path, offset=c.read_off)
        if st is not None:
            for idx, m in enumerate(self._matchers):
                if m.matches(c.path):
                    self._try_open(c.path, idx)
                    break

    def _read_all(self) -> bool:
        busy = False
        self.paced = False
        # Rotated files first: their lines are older than the new file's.
        for c in sorted(self._by_key.values(), key=lambda c: not c.rotated):
            if self._read(c):
                busy = True
        return busy

    def _put_all(self, lines: list[bytes], nbytes: int, source: str) -> int:
        self._put(lines, nbytes, source)
        return len(lines)

    def _read(self, c: _Cursor) -> bool:
        """Read up to the per-round budget; True if more is waiting."""
        if c.carry and not self._flush_carry(c):
            self.paced = True
            return False
        try:
            size = os.fstat(c.fd).st_size
        except OSError:
            return False
        if size < c.read_off or (size > c.read_off and not self._same_file(c)):
            self._truncated(c, size)
        c.size_seen = size
        if size <= c.read_off:
            c.behind_since = None
            return False
        if c.behind_since is None:
            c.behind_since = time.monotonic()
        budget = min(self._cfg.read_budget, self._room())
        if budget <= 0:
            self.paced = True
            return False
        chunk = self._cfg.read_chunk
        while budget > 0:
            data = os.pread(c.fd, min(chunk, budget), c.read_off)
            if not data:
                break
            c.read_off += len(data)
            budget -= len(data)
            self._consume(c, data)
            if c.carry:  # the queue is full: read on once it has taken these
                self.paced = True
                break
        c.last_growth = time.monotonic()
        c.size_seen = max(c.size_seen, c.read_off)
        if c.read_off >= c.size_seen:
            c.behind_since = None
        return budget <= 0

    def _consume(self, c: _Cursor, data: bytes) -> None:
        """Cut ``data`` into lines and hand them on."""
        splitter = c.splitter
        lines, nbytes = splitter.feed(data)
        if splitter.truncated or splitter.too_long:
            self._report_long(c, splitter)
        end = c.read_off if splitter.skipping else c.read_off - len(splitter.partial)
        if c.ml is not None:
            self._hand_on_joined(c, end, lines)
        elif lines:
            self._hand_on(c, end, lines, nbytes)
        elif splitter.skipping:
            c.entry.exact = end

    def _hand_on_joined(self, c: _Cursor, end: int, lines: list[bytes]) -> None:
        """Multiline: hand on finished records; the pending one's bytes stay unconsumed."""
        assert c.ml is not None
        records = c.ml.feed(lines) if lines else []
        if records:
            self._hand_on(c, end, records, sum(map(len, records)))
        # Lines still held by the joiner are not consumed yet: a crash loses them within
        # the reservation, and they are counted (lost_on_crash) like any unread bytes.
        if not c.carry:
            c.entry.exact = max(end - c.ml.pending_bytes, 0)

    def _hand_on(self, c: _Cursor, end: int, lines: list[bytes], nbytes: int) -> None:
        """Make ``end`` durable, then hand the lines on; what the queue cannot take yet
        waits in ``c.carry`` (the position moves on only once all of it is taken)."""
        entry = c.entry
        if not self._registry.reserve(entry, end):
            self._ledger.read_and_dropped("registry_unwritable", len(lines), nbytes)
            self.degraded = True
            self._warn("registry_unwritable", path=str(self._registry.path),
                       error=self._registry.last_error, lines=len(lines))
            entry.exact = end
            return
        if self.degraded:
            self.degraded = False
            self._log.info("registry_recovered", path=str(self._registry.path))
        k = self._offer(lines, nbytes, c.path)
        if k < len(lines):
            c.carry = lines[k:]
            c.carry_end = end
            return
        entry.exact = end

    def _flush_carry(self, c: _Cursor, force: bool = False) -> bool:
        """Offer the carried lines again (``force``: put them, dropping what does not fit)."""
        rest = c.carry
        nbytes = sum(map(len, rest))
        if force:
            self._put(rest, nbytes, c.path)
            k = len(rest)
        else:
            k = self._offer(rest, nbytes, c.path)
        if k < len(rest):
            c.carry = rest[k:]
            return False
        c.carry = []
        c.entry.exact = c.carry_end
        return True

    def _report_long(self, c: _Cursor, s: LineSplitter) -> None:
        if s.truncated:
            self._ledger.event("lines_truncated", s.truncated)
            self._warn("line_truncated", path=c.path, count=s.truncated,
                       max_line_bytes=self._inputs[c.inp].max_line_bytes)
        if s.too_long:
            self._ledger.read_and_dropped("line_too_long", s.too_long, s.too_long_bytes)
            self._warn("lines_dropped", reason="line_too_long", path=c.path, count=s.too_long)
        s.reset_counts()

    def _same_file(self, c: _Cursor) -> bool:
        """Check the fingerprint still matches (catches truncate-then-rewrite); extend it."""
        e = c.entry
        want = self._cfg.fingerprint_bytes
        try:
            head = os.pread(c.fd, want if e.fp_len < want else e.fp_len, 0)
        except OSError:
            return True
        if _fp(head[: e.fp_len]) != e.fp:
            return False
        if e.fp_len < want and len(head) > e.fp_len:
            e.fp_len, e.fp = len(head), _fp(head)
        return True

    def _truncated(self, c: _Cursor, size: int) -> None:
        e = c.entry
        unread = max(c.size_seen - c.read_off, 0) + len(c.splitter.partial)
        self._orphans.append(_Orphan(fp_len=e.fp_len, fp=e.fp, offset=e.exact, lost=unread,
                                     expires=time.monotonic() + self._cfg.rotate_wait))
        self._ledger.event("files_truncated")
        self._log.info("file_truncated", path=c.path, offset=c.read_off, size=size)
        head = os.pread(c.fd, self._cfg.fingerprint_bytes, 0)
        e.reidentify(len(head), _fp(head))
        c.read_off = 0
        c.size_seen = size
        c.splitter = LineSplitter(self._inputs[c.inp].max_line_bytes,
                                  self._inputs[c.inp].long_lines)
        # Pending copies of the old content may now be read from where we stopped.
        for path in list(self._pending_copies):
            self._pending_copies[path] = 0.0
            self._retry.add(path)

    # -- housekeeping -------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._close_idle(now)
        self._expire(now)
        if self._registry.forget_old(time.time(), set(self._by_key)):
            self._registry.save()
        if not self._registry.healthy and self._registry.save():
            self.degraded = False
        self._report_gauges(now)

    def _close_idle(self, now: float) -> None:
        """Flush due multiline records; close rotated files and inactive ones."""
        cfg = self._cfg
        for c in list(self._by_key.values()):
            if c.ml is not None and not c.carry and c.ml.due(now):
                self._flush_multiline(c)
            idle = now - c.last_growth
            if c.rotated and idle >= cfg.rotate_wait and c.read_off >= c.size_seen:
                self._close(c, "rotated")
            elif not c.rotated and idle >= self._inputs[c.inp].close_inactive and (
                    c.read_off >= c.size_seen):
                self._ledger.event("files_closed_inactive")
                self._close(c, "inactive")

    def _expire(self, now: float) -> None:
        """Count truncation losses no copy turned up for; forget stale pending copies."""
        for o in [o for o in self._orphans if now >= o.expires]:
            self._orphans.remove(o)
            if o.lost:
                self._ledger.lost_bytes("truncated_unread", o.lost)
                self._warn("bytes_lost", reason="truncated_unread", bytes=o.lost)
        for path, give_up in list(self._pending_copies.items()):
            if give_up and now > give_up + self._cfg.rotate_wait * 2:
                del self._pending_copies[path]

    def _report_gauges(self, now: float) -> None:
        behind: dict[int, int] = {}
        oldest = 0.0
        for c in self._by_key.values():
            behind[c.inp] = behind.get(c.inp, 0) + max(c.size_seen - c.read_off, 0)
            if c.behind_since is not None:
                oldest = max(oldest, now - c.behind_since)
        led = self._ledger
        led.set_gauge("files_watched", len(self._by_key))
        led.set_gauge("oldest_unread_age_seconds", oldest)
        for i in range(len(self._inputs)):
            led.set_gauge(f"bytes_behind:{i}", behind.get(i, 0))

    def _flush_multiline(self, c: _Cursor) -> None:
        """Hand on the record the multiline joiner holds (complete lines, so always safe)."""
        assert c.ml is not None
        rec = c.ml.flush()
        if rec is not None:
            s = c.splitter
            end = c.read_off if s.skipping else c.read_off - len(s.partial)
            self._hand_on(c, end, [rec], len(rec))

    def _close(self, c: _Cursor, reason: str) -> None:
        """Close ``c``; a rotated file's partial last line is shipped (it will not grow).

        Lines still carried are put now (dropped by the queue's policy if it is full), so
        the saved position never covers a line that was neither queued nor counted.
        """
        if c.carry:
            self._flush_carry(c, force=True)
        if c.ml is not None:
            self._flush_multiline(c)
        if reason == "rotated":
            tail = c.splitter.flush()
            if tail is not None:
                self._ledger.event("partial_lines_flushed")
                self._hand_on(c, c.read_off, [tail], len(tail))
        if c.carry:
            self._flush_carry(c, force=True)
        try:
            gone = os.fstat(c.fd).st_nlink == 0
        except OSError:
            gone = False
        os.close(c.fd)
        self._by_key.pop(c.entry.key, None)
        if self._by_path.get(c.path) is c:
            del self._by_path[c.path]
        if gone:
            self._registry.entries.pop(c.entry.key, None)
        self._ledger.event("files_closed")
        self._log.info("file_closed", path=c.path, offset=c.read_off, reason=reason)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, f"{event}:{kw.get('path', '')}", **kw)
