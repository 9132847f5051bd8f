"""The tailer thread: schedules discovery, opening, reading and housekeeping of files.

It owns the table of open files (one ``FileReader`` each) and decides, with the identity
rules (``identity``) and the registry, where a newly opened file is read from. Reading hands
each chunk on in one way: its end position is made durable in the registry first, then the
chunk is offered to the queue; what the queue cannot take yet stays with the reader, and
nothing more is read until a ``take`` makes room.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from shipper.chunk import Chunk, Source
from shipper.config import InputConfig, TailConfig
from shipper.ledger import Ledger
from shipper.log import RateLimiter
from shipper.tail.discovery import ChangeSet, Matcher, Watcher, base_dir
from shipper.tail.identity import DEFER, Copies, fingerprint, line_start
from shipper.tail.reader import FileReader
from shipper.tail.registry import Entry, Registry, RegistryCorruptError

__all__ = ["Tailer"]

Offer = Callable[[Chunk], "Chunk | None"]
Put = Callable[[Chunk], None]
WaitForRoom = Callable[[float], bool]

_ROOM_WAIT = 0.1  # longest wait for queue room before looking at the files again


class Tailer:
    """Discovers, follows and reads files on its own thread; hands chunks to the queue."""

    def __init__(
        self,
        inputs: Sequence[InputConfig],
        cfg: TailConfig,
        *,
        registry: Registry,
        offer: Offer,
        put: Put,
        wait_for_room: WaitForRoom,
        ledger: Ledger,
        log: Any,
    ) -> None:
        self._inputs = list(inputs)
        self._cfg = cfg
        self._registry = registry
        self._offer = offer
        self._put = put
        self._wait_for_room = wait_for_room
        self._ledger = ledger
        self._log = log
        self._limiter = RateLimiter(10.0)
        self._matchers = [Matcher(i.paths, i.exclude) for i in inputs]
        self._changes = ChangeSet()
        self._watcher = Watcher(self._changes)
        self._copies = Copies(cfg.rotate_wait, ledger, self._warn)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_key: dict[str, FileReader] = {}
        self._by_path: dict[str, FileReader] = {}  # active (not rotated) reader of each path
        self._retry: set[str] = set()  # paths to try to open again (deferred, unreadable)
        self._turn = 0  # which reader reads first in a round (fairness while paced)
        self._held: FileReader | None = None  # the one reader whose lines the queue refused
        self._paced = False  # the last round stopped because the queue was full
        self._initial = True
        self._registry_reset = False
        self.degraded = False  # the registry cannot be written
        self.polls = 0  # rounds that looked at every open file (for tests and debugging)
        self.rescans = 0  # glob rescans done

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

    def _halt(self) -> None:
        """Stop the reading thread and the watcher."""
        self._stop.set()
        self._changes.event.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._watcher.stop()

    def stop(self) -> None:
        """Stop reading, close every file and save exact positions."""
        self._halt()
        for r in list(self._by_key.values()):
            self._close(r, "shutdown")
        if not self._registry.save(exact=True):
            self._log.error(
                "registry_unwritable",
                path=str(self._registry.path),
                error=self._registry.last_error,
            )
        self._registry.close()

    def abandon(self) -> None:
        """Stop the thread and close the files without saving anything (what a crash leaves)."""
        self._halt()
        for r in list(self._by_key.values()):
            r.close()
        self._by_key.clear()
        self._by_path.clear()
        self._registry.close()

    @property
    def thread(self) -> threading.Thread | None:
        """The reading thread (for leak checks)."""
        return self._thread

    def open_files(self) -> dict[str, str]:
        """Identity (``dev:ino``) -> path opened under, of every file open for reading."""
        return {key: r.path for key, r in list(self._by_key.items())}

    def _load_registry(self) -> None:
        try:
            self._registry.load()
        except RegistryCorruptError as exc:
            self._registry_reset = True
            self._ledger.event("registry_reset")
            self._log.error(
                "registry_reset",
                path=str(self._registry.path),
                error=str(exc),
                action="starting at the end of existing files",
            )

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        cfg = self._cfg
        next_rescan = 0.0
        next_poll = 0.0
        while not self._stop.is_set():
            busy = False
            try:
                now = time.monotonic()
                if now >= next_rescan:
                    self._rescan()
                    self._initial = False
                    self.rescans += 1
                    self._ledger.event("tail_rescans")
                    next_rescan = now + cfg.rescan_interval
                changed = self._changes.drain()
                poll = now >= next_poll
                if poll:
                    next_poll = now + cfg.poll_interval
                self._on_changes(changed, poll)
                busy = self._read_all()
                if poll:
                    self._housekeeping(now)
                    self.polls += 1
                    self._ledger.event("tail_polls")
            except Exception as exc:  # noqa: BLE001  # the thread must not die: log, count, go on
                self._ledger.event("tailer_errors")
                self._log.exception("tailer_error", error=str(exc))
                self._stop.wait(0.5)
                continue
            if self._paced:
                self._wait_for_room(min(_ROOM_WAIT, cfg.poll_interval))
            elif not busy:
                self._changes.event.wait(cfg.poll_interval)

    def _rescan(self) -> None:
        for m in self._matchers:
            for pattern in m.patterns:
                d, rec = base_dir(pattern)
                if not self._watcher.ensure(d, rec) and os.path.isdir(d):
                    # inotify limits or permissions: the poll and the rescan cover it.
                    self._ledger.event("watch_failed")
                    self._warn(
                        "watch_failed",
                        directory=d,
                        error=self._watcher.failed.get(d),
                        fallback="polling",
                    )
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
            paths.update(self._copies.pending)
        self._retry.clear()
        for path in paths:
            r = self._by_path.get(path)
            if r is not None:
                self._check_rotation(r)
                if self._by_path.get(path) is not None:
                    continue
            for idx, m in enumerate(self._matchers):
                if m.matches(path):
                    self._try_open(path, idx)
                    break

    # -- opening ------------------------------------------------------------------------
    def _try_open(self, path: str, idx: int) -> None:
        """Open ``path`` for input ``idx`` if it is a file to read and not open yet."""
        st = self._openable(path, idx)
        if st is None:
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

    def _openable(self, path: str, idx: int) -> os.stat_result | None:  # noqa: PLR0911  # one exit per reason to skip
        """The stat of ``path`` if it is a file of input ``idx`` to open now, else None."""
        inp = self._inputs[idx]
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._open_failed(path, exc)
            return None
        if stat.S_ISLNK(lst.st_mode):
            if not inp.follow_symlinks:
                return None
            real = os.path.realpath(path)
            if not self._matchers[idx].inside_roots(real):
                self._ledger.event("symlink_outside_roots")
                self._warn("symlink_outside_roots", path=path, target=real)
                return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        known = self._by_key.get(f"{st.st_dev}:{st.st_ino}")
        if known is not None:
            self._registry.seen(known.entry, time.time())
            return None
        if inp.ignore_older is not None and time.time() - st.st_mtime > inp.ignore_older:
            return None
        if not st.st_size:
            # Nothing to read, and nothing to tell the file by yet: open it once it has bytes
            # (a write wakes us; the rescan is the safety net).
            return None
        return st

    def _open_failed(self, path: str, exc: OSError) -> None:
        self._retry.add(path)
        reason = errno.errorcode.get(exc.errno or 0, "error").lower()
        self._ledger.event(f"open_failed_{reason}")
        self._warn("file_open_failed", path=path, error=exc.strerror, errno=reason)

    def _adopt(self, path: str, idx: int, fd: int, st: os.stat_result) -> None:
        """Decide where to start reading a newly opened file, and track it."""
        head = os.pread(fd, self._cfg.fingerprint_bytes, 0)
        fp_len, fp = len(head), fingerprint(head)
        size = st.st_size
        entry = self._registry.find(f"{st.st_dev}:{st.st_ino}")
        mid_line = False  # resuming inside a line (after a crash)
        # An entry of a file that was empty (fp_len 0) matches anything: no identity.
        if (
            entry is not None
            and 0 < entry.fp_len <= fp_len
            and (fingerprint(head[: entry.fp_len]) == entry.fp)
        ):
            if entry.restored:
                start, mid_line = self._resume_at(entry, fd, size)
                how = "registry"
            else:
                start, how = min(entry.exact, size), "reopened"
        else:
            found = self._new_entry(path, idx, st, fp_len, fp, known=entry is not None)
            if found is None:
                os.close(fd)
                return
            entry, start, how = found
        self._registry.opened(entry, path, time.time())
        if entry.fp_len < fp_len and fingerprint(head[: entry.fp_len]) == entry.fp:
            self._registry.refingerprint(entry, fp_len, fp)
        reader = FileReader(
            source=Source(path, idx),
            inp=self._inputs[idx],
            fd=fd,
            entry=entry,
            start=start,
            size=size,
            mid_line=mid_line,
            ledger=self._ledger,
            warn=self._warn,
        )
        self._by_key[entry.key] = reader
        self._by_path[path] = reader
        self._copies.opened(path)
        self._ledger.event("files_opened")
        self._log.info("file_opened", path=path, offset=start, size=size, start=how)

    def _new_entry(
        self, path: str, idx: int, st: os.stat_result, fp_len: int, fp: str, *, known: bool
    ) -> tuple[Entry, int, str] | None:
        """Registry entry and start offset for a file not known by this identity; None
        to look again later (a copy of a file being read, or an empty new file)."""
        size = st.st_size
        copy = self._copies.match(path, fp_len, fp, size, self._by_key.values())
        if copy == DEFER:
            self._retry.add(path)
            return None
        if known:
            self._ledger.event("identity_changed")
        if isinstance(copy, int):
            start, how = copy, "copy"
        elif self._initial and (
            self._registry_reset
            or (not self._registry.existed and self._inputs[idx].start_at == "end")
        ):
            start, how = size, "end"
        else:
            start, how = 0, "beginning"
        entry = self._registry.add(
            dev=st.st_dev, ino=st.st_ino, fp_len=fp_len, fp=fp, path=path, start=start
        )
        return entry, start, how

    def _resume_at(self, entry: Entry, fd: int, size: int) -> tuple[int, bool]:
        """Where to resume a file known from the registry on disk; True if inside a line."""
        start = min(entry.durable, size)
        if start <= entry.exact:
            return start, False
        # After a crash: skip what may have been read, up to the next line start.
        start, mid_line = line_start(fd, start, size)
        self._ledger.lost_bytes("lost_on_crash", start - entry.exact)
        self._registry.resumed_past(entry, start)
        return start, mid_line

    def _make_room(self) -> bool:
        """Close the longest-idle file that is not draining a rotation; False if none."""
        idle = [r for r in self._by_key.values() if not r.rotated and r.idle and r.carry is None]
        if not idle:
            return False
        victim = min(idle, key=lambda r: r.last_growth)
        self._ledger.event("files_closed_for_room")
        self._close(victim, "room")
        return True

    # -- following ----------------------------------------------------------------------
    def _check_rotation(self, r: FileReader) -> None:
        try:
            st = os.stat(r.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return
        if st is not None and f"{st.st_dev}:{st.st_ino}" == r.entry.key:
            return
        # Renamed away or deleted: keep draining the open descriptor, then close it.
        r.rotated = True
        r.last_growth = time.monotonic()
        del self._by_path[r.path]
        self._ledger.event("files_rotated")
        self._log.info("file_rotated", path=r.path, offset=r.read_off)
        if st is not None:
            for idx, m in enumerate(self._matchers):
                if m.matches(r.path):
                    self._try_open(r.path, idx)
                    break

    def _read_all(self) -> bool:
        """One round over the open files; True if any has more to read right away.

        The reader holding lines the queue refused goes first; then rotated files (their
        lines are older than the new file's), then the others starting one further each
        round, so that a full queue is shared fairly. The round ends at the first refusal:
        at most one reader ever holds lines the queue did not take.
        """
        self._paced = False
        held = self._held
        if (
            held is not None
            and held.carry is not None
            and not self._hand_on(held, held.carry, held.carry_end)
        ):
            return True
        readers = list(self._by_key.values())
        active = [r for r in readers if not r.rotated]
        if active:
            self._turn = (self._turn + 1) % len(active)
            active = active[self._turn :] + active[: self._turn]
        busy = False
        for r in [r for r in readers if r.rotated] + active:
            more = self._read(r)
            if self._paced:
                return True
            busy = busy or more
        return busy

    def _read(self, r: FileReader) -> bool:
        """Read ``r`` up to the per-round budget; True if more is waiting."""
        try:
            size = os.fstat(r.fd).st_size
        except OSError:
            return False
        if size < r.read_off or (size > r.read_off and not self._same_file(r)):
            self._truncated(r, size)
        r.size_seen = size
        if size <= r.read_off:
            r.behind_since = None
            return False
        if r.behind_since is None:
            r.behind_since = time.monotonic()
        budget = self._cfg.read_budget
        start = r.read_off
        for chunk, end in r.read(budget, self._cfg.read_chunk):
            if chunk is None:
                self._registry.commit(r.entry, end)
            elif not self._hand_on(r, chunk, end):
                break
        r.last_growth = time.monotonic()
        r.size_seen = max(r.size_seen, r.read_off)
        if r.idle:
            r.behind_since = None
        return r.read_off - start >= budget

    def _hand_on(self, r: FileReader, chunk: Chunk, end: int, force: bool = False) -> bool:
        """Make ``end`` durable, then offer ``chunk`` to the queue (``force``: put it, dropping
        what does not fit). False when the queue could not take all: the rest is kept in
        ``r.carry``, and the exact position stops where the rest begins."""
        entry = r.entry
        r.carry = None
        self._held = None
        if not self._registry.advance(entry, end):
            self._ledger.rejected("registry_unwritable", len(chunk.lines), chunk.nbytes)
            self.degraded = True
            self._warn(
                "registry_unwritable",
                path=str(self._registry.path),
                error=self._registry.last_error,
                lines=len(chunk.lines),
            )
            self._registry.commit(entry, end)
            return True
        if self.degraded:
            self.degraded = False
            self._log.info("registry_recovered", path=str(self._registry.path))
        if force:
            self._put(chunk)
            rest = None
        else:
            rest = self._offer(chunk)
        if rest is not None:
            r.carry, r.carry_end = rest, end
            self._held = r
            self._paced = True
            self._registry.commit(entry, rest.base)
            return False
        self._registry.commit(entry, end)
        return True

    def _same_file(self, r: FileReader) -> bool:
        """Check the fingerprint still matches (catches truncate-then-rewrite); extend it."""
        e = r.entry
        want = self._cfg.fingerprint_bytes
        try:
            head = os.pread(r.fd, want if e.fp_len < want else e.fp_len, 0)
        except OSError:
            return True
        if fingerprint(head[: e.fp_len]) != e.fp:
            return False
        if e.fp_len < want and len(head) > e.fp_len:
            self._registry.refingerprint(e, len(head), fingerprint(head))
        return True

    def _truncated(self, r: FileReader, size: int) -> None:
        e = r.entry
        unread = max(r.size_seen - r.read_off, 0) + len(r.splitter.partial)
        self._copies.truncated(e.fp_len, e.fp, e.exact, unread)
        self._retry.update(self._copies.pending)
        self._ledger.event("files_truncated")
        self._log.info("file_truncated", path=r.path, offset=r.read_off, size=size)
        head = os.pread(r.fd, self._cfg.fingerprint_bytes, 0)
        self._registry.restart(e, len(head), fingerprint(head))
        r.restart(size)

    # -- housekeeping -------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._close_idle(now)
        self._copies.expire(now)
        if self._registry.forget_old(time.time(), set(self._by_key)):
            self._registry.save()
        if not self._registry.healthy and self._registry.save():
            self.degraded = False
        self._report_gauges(now)

    def _close_idle(self, now: float) -> None:
        """Hand on due multiline records; close rotated files and inactive ones."""
        cfg = self._cfg
        for r in list(self._by_key.values()):
            if r.ml is not None and r.carry is None and r.ml.due(now):
                rec = r.flush_joined()
                if rec is not None:
                    self._hand_on(r, rec, r.consumed)
            if not r.idle or r.carry is not None:
                continue
            idle = now - r.last_growth
            if r.rotated and idle >= cfg.rotate_wait:
                self._close(r, "rotated")
            elif not r.rotated and idle >= self._inputs[r.source.input].close_inactive:
                self._ledger.event("files_closed_inactive")
                self._close(r, "inactive")

    def _report_gauges(self, now: float) -> None:
        behind: dict[int, int] = {}
        oldest = 0.0
        for r in self._by_key.values():
            i = r.source.input
            behind[i] = behind.get(i, 0) + max(r.size_seen - r.read_off, 0)
            if r.behind_since is not None:
                oldest = max(oldest, now - r.behind_since)
        led = self._ledger
        led.set_gauge("files_watched", len(self._by_key))
        led.set_gauge("oldest_unread_age_seconds", oldest)
        for i in range(len(self._inputs)):
            led.set_gauge(f"bytes_behind:{i}", behind.get(i, 0))

    def _close(self, r: FileReader, reason: str) -> None:
        """Close ``r``. Lines the queue had not taken stay in the file: the exact position is
        where they begin, so a restart reads them. Otherwise what the reader still holds is
        put once (dropped by the queue's policy if it is full): the multiline record, and a
        rotated file's last line without a newline (it will not grow)."""
        if r.carry is not None:
            r.carry = None  # its start is already the exact position
            if self._held is r:
                self._held = None
        else:
            rec = r.flush_joined()
            if rec is not None:
                self._hand_on(r, rec, r.consumed, force=True)
        if reason == "rotated":
            tail = r.flush_partial()
            if tail is not None:
                self._ledger.event("partial_lines_flushed")
                self._hand_on(r, tail, r.read_off, force=True)
        gone = r.gone()
        r.close()
        self._by_key.pop(r.entry.key, None)
        if self._by_path.get(r.path) is r:
            del self._by_path[r.path]
        if gone:
            self._registry.forget(r.entry)
        self._ledger.event("files_closed")
        self._log.info("file_closed", path=r.path, offset=r.read_off, reason=reason)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, f"{event}:{kw.get('path', '')}", **kw)
