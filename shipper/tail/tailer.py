"""The tailer thread: schedules discovery, opening, reading and housekeeping of files.

It owns the table of open files (one ``FileReader`` each) and decides, with the identity
rules (``identity``) and the registry, where a newly opened file is read from. Reading hands
each chunk on in one way: its end position is made durable in the registry first, then the
chunk is offered to the queue; what the queue cannot take yet stays with the reader, and
nothing more is read until a ``take`` makes room. One registry save per round covers every
file that needs one (new files, used-up reservations), so fsync is not paid per file.

Only regular files are read: a path is opened with ``O_NONBLOCK`` and the descriptor checked
with ``fstat``, so a FIFO, socket, device or directory put under a log name is counted and
never read. Whatever cannot be listed, watched or opened is counted once and reported by
``problems``; nothing in a file system stops the thread.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shipper.chunk import Chunk, Source
from shipper.config import InputConfig, TailConfig
from shipper.ledger import Ledger
from shipper.log import RateLimiter
from shipper.tail.discovery import Changes, ChangeSet, Matcher, Scan, Watcher, base_dir
from shipper.tail.identity import (
    DEFER,
    OPEN_FLAGS,
    Copies,
    fingerprint,
    line_start,
)
from shipper.tail.reader import FileReader
from shipper.tail.registry import Entry, Registry, RegistryCorruptError

__all__ = ["Tailer"]

Offer = Callable[[Chunk], "Chunk | None"]
Put = Callable[[Chunk], None]
WaitForRoom = Callable[[float], bool]

_ROOM_WAIT = 0.1  # longest wait for queue room before looking at the files again
_MAX_REMEMBERED = 100_000  # bound of the per-path memories below (cleared when exceeded)


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
        fresh_inputs: Iterable[int] | None = None,
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
        self._watcher = Watcher(self._changes, cfg.coalesce)
        self._copies = Copies(
            cfg.rotate_wait,
            ledger,
            self._warn,
            found_within=cfg.rescan_interval + cfg.poll_interval,
            registry=registry,
            info=log.info,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._by_key: dict[str, FileReader] = {}
        self._by_path: dict[str, FileReader] = {}  # active (not rotated) reader of each path
        self._retry: set[str] = set()  # paths to try to open again (deferred, unreadable)
        self._turn = 0  # which reader reads first in a round (fairness while paced)
        self._held: FileReader | None = None  # the one reader whose lines the queue refused
        self._paced = False  # the last round stopped because the queue was full
        # Inputs whose files present at their first scan start where ``start_at`` says;
        # None: every input, if this is the very first start (no registry yet).
        self._fresh_inputs = None if fresh_inputs is None else set(fresh_inputs)
        self._first_seen: dict[str, int] = {}  # path -> input, found by the first scan
        self._damaged = False  # the registry lost positions: unknown files start at the end
        self._save_failed = False  # this round's registry save failed: do not retry per chunk
        self._room: list[FileReader] | None = None  # idle readers to close for room, this round
        self._unopened: dict[str, int | None] = {}  # seen, never opened: path -> size if known
        self._deferred: set[str] = set()  # waiting for room under max_open_files
        self._unchanged: set[str] = set()  # identities found unchanged since closed, this run
        self._flagged: dict[tuple[str, str], str] = {}  # (problem, path) -> identity, once
        self.unreadable_dirs: dict[str, str] = {}  # directory -> error, while it lasts
        self.watch_failed: dict[str, str] = {}  # directory -> error, while it lasts
        self.unreadable_files: set[str] = set()
        self.degraded = False  # the registry cannot be written
        self.last_read = time.monotonic()  # when bytes were last read from a file
        self.polls = 0  # rounds that looked at every open file (for tests and debugging)
        self.rescans = 0  # glob rescans done

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Load the registry (or resume it after a rebuild), start watching and start the
        reading thread."""
        if self._registry.loaded:
            self._registry.resume()
        else:
            self._load_registry()
        self._registry.start()
        self._watcher.start()
        self._thread = threading.Thread(target=self._run, name="shipper-tailer", daemon=True)
        self._thread.start()

    def _halt(self) -> None:
        """Stop the reading thread and the watcher."""
        self._stop.set()
        self._changes.event.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)
        self._watcher.stop()

    def stop(self) -> None:
        """Stop reading, close every file and save exact positions."""
        self._halt()
        for r in list(self._by_key.values()):
            self._close(r, "shutdown")
        self._copies.expire()  # truncations whose copy never turned up: their losses now
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

    def threads(self) -> list[threading.Thread]:
        """Every thread this stage runs (reading, registry writer, watcher), for supervision."""
        out = [self._thread, self._registry.thread, self._watcher.thread]
        return [t for t in out if t is not None]

    def open_files(self) -> dict[str, str]:
        """Identity (``dev:ino``) -> path opened under, of every file open for reading."""
        return {key: r.path for key, r in list(self._by_key.items())}

    def looked_at(self) -> set[str]:
        """Identities (``dev:ino``) of the files open now, and of those found unchanged since
        they were closed (not opened again: nothing in them to read)."""
        return set(list(self._by_key) + list(self._unchanged))

    def problems(self) -> dict[str, Any]:
        """What keeps the tailer from doing all of its job, for /health (empty when none)."""
        out: dict[str, Any] = {}
        if self.degraded:
            out["registry_unwritable"] = self._registry.last_error or "write failed"
        if self.unreadable_dirs:
            out["directory_unreadable"] = sorted(self.unreadable_dirs)[:20]
        if self.watch_failed:
            out["watch_failed"] = sorted(self.watch_failed)[:20]
        if self.unreadable_files:
            out["file_unreadable"] = len(self.unreadable_files)
        return out

    def behind(self) -> bool:
        """True while a file has bytes not read yet, or lines the queue did not take."""
        return any(not r.idle or r.carry is not None for r in list(self._by_key.values()))

    def state(self) -> dict[str, Any]:
        """Every open file's position and the tailer's memories, for one log line (SIGUSR1).
        Read from another thread: a moment's view, not a consistent snapshot."""
        files = [
            {
                "path": r.path,
                "id": key,
                "offset": r.read_off,
                "exact": r.entry.exact,
                "durable": r.entry.durable,
                "size": r.size_seen,
                "rotated": r.rotated,
                "held_lines": len(r.carry.lines) if r.carry is not None else 0,
                "partial_bytes": len(r.splitter.partial),
                "skipping_long_line": r.splitter.skipping,
                "input": r.source.input,
            }
            for key, r in list(self._by_key.items())
        ]
        return {
            "files": files,
            "registry_entries": len(self._registry),
            "registry_writable": not self.degraded,
            "waiting_to_open": len(self._retry),
            "directories_watched": self._watcher.watched,
            **self.problems(),
        }

    def _load_registry(self) -> None:
        reg = self._registry
        try:
            report = reg.load()
        except RegistryCorruptError as exc:
            self._damaged = True
            self._ledger.event("registry_reset")
            self._log.error(
                "registry_reset",
                path=str(reg.path),
                error=str(exc),
                action="starting at the end of existing files",
            )
            return
        if self._fresh_inputs is None:
            self._fresh_inputs = set() if reg.existed else set(range(len(self._inputs)))
        if not report.damaged:
            return
        self._damaged = True
        if report.dropped:
            self._ledger.event("registry_entries_dropped", report.dropped)
        if report.trimmed:
            self._ledger.event("registry_entries_trimmed", report.trimmed)
        self._log.error(
            "registry_damaged",
            path=str(reg.path),
            kept=report.entries,
            dropped=report.dropped,
            trimmed=report.trimmed,
            max_entries=reg.max_entries,
            problem=report.problem,
            action="files not in it start at their end",
        )

    # -- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        cfg = self._cfg
        next_rescan = 0.0
        next_poll = 0.0
        next_full = 0.0
        next_forget = 0.0
        while not self._stop.is_set():
            busy = False
            try:
                now = time.monotonic()
                if now >= next_rescan:
                    self._rescan(all_inputs=True)
                    self.rescans += 1
                    self._ledger.event("tail_rescans")
                    next_rescan = now + cfg.rescan_interval
                changes = self._changes.drain()
                poll = now >= next_poll
                # Where inotify watches, it tells which file changed: every open file is
                # looked at once per rescan_interval only. Where it does not, every poll.
                unwatched = bool(self.watch_failed) or self._watcher.unavailable is not None
                full = poll and (now >= next_full or unwatched)
                if poll:
                    next_poll = now + cfg.poll_interval
                    if unwatched:
                        self._rescan(all_inputs=False)  # polling stands in for inotify
                if full:
                    next_full = now + cfg.rescan_interval
                dirty = self._on_changes(changes, poll, full)
                busy = self._read_all(None if full else dirty)
                if self._registry.dirty:  # files started past 0 this round: one save for all
                    self._registry.save()
                if poll:
                    self._housekeeping(now, forget=now >= next_forget)
                    if now >= next_forget:
                        next_forget = now + cfg.rescan_interval
                if full:
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

    def _rescan(self, all_inputs: bool) -> None:
        """Watch every root, walk the globs and open what is new. With ``all_inputs`` False,
        only the roots that have no watch (polling stands in for inotify there)."""
        scan = Scan()
        found: list[tuple[int, set[str]]] = []
        for idx, m in enumerate(self._matchers):
            unwatched = False
            for pattern in m.patterns:
                d, rec = base_dir(pattern)
                if not self._watch(d, rec):
                    unwatched = True
            if all_inputs or unwatched:
                before = set(scan.paths)
                m.scan(scan)
                found.append((idx, scan.paths - before))
        self._report_scan(scan, all_inputs)
        first = self.rescans == 0 and all_inputs
        for idx, paths in found:
            for path in paths:
                if first and (self._damaged or idx in (self._fresh_inputs or ())):
                    self._first_seen[path] = idx
                if path not in self._by_path:
                    self._try_open(path, idx)
        self._ledger.set_gauge("dirs_watched", self._watcher.watched)

    def _watch(self, d: str, recursive: bool) -> bool:
        """Make sure ``d`` is watched; count and report a failure once, and its end."""
        if self._watcher.ensure(d, recursive):
            if self.watch_failed.pop(d, None) is not None:
                self._log.info("watch_restored", directory=d)
            return True
        error = self._watcher.failed.get(d)
        if error is None:  # the directory does not exist (yet): nothing to watch
            return False
        if d not in self.watch_failed:
            self.watch_failed[d] = error
            self._ledger.event("watch_failed")
            self._log.warning("watch_failed", directory=d, error=error, fallback="polling")
        return False

    def _report_scan(self, scan: Scan, complete: bool) -> None:
        for d, error in scan.unreadable.items():
            if d not in self.unreadable_dirs:
                self.unreadable_dirs[d] = error
                self._ledger.event("directory_unreadable")
                self._log.warning("directory_unreadable", directory=d, error=error)
        for d in [d for d in self.unreadable_dirs if d in scan.listed]:
            del self.unreadable_dirs[d]
            self._log.info("directory_readable", directory=d)
        if complete:
            for d in [d for d in self.unreadable_dirs if d not in scan.unreadable]:
                del self.unreadable_dirs[d]  # gone, or no longer under a glob
        for path in scan.loops:
            self._flag("symlink_loop", path, "", directory=True)

    def _on_changes(self, changes: Changes, poll: bool, full: bool) -> set[FileReader]:
        """Act on what watchdog reported; on a poll, retry what waits; on a full poll, look
        at every open file again. Return the readers of the files that may have changed."""
        paths = set(changes.paths)
        self._note_created_and_gone(changes)
        if poll:
            paths.update(self._retry)
            paths.update(self._copies.pending)
            self._retry.clear()
            if full:
                paths.update(self._by_path)
            else:
                paths.update(r.path for r in self._by_path.values() if r.always_poll)
        dirty: set[FileReader] = set()
        for path in paths:
            r = self._by_path.get(path)
            if r is not None:
                dirty.add(r)
                self._check_rotation(r)
                if self._by_path.get(path) is not None:
                    continue
            idx = self._input(path)
            if idx is not None:
                self._try_open(path, idx)
                r = self._by_path.get(path)
                if r is not None:
                    dirty.add(r)
        return dirty

    def _note_created_and_gone(self, changes: Changes) -> None:
        """Remember files created and not opened yet; count those deleted before opened."""
        for path in changes.moved_away:
            self._unopened.pop(path, None)
        for path in changes.created - changes.moved_away:
            if (
                path not in self._by_path
                and path not in self._unopened
                and self._input(path) is not None
            ):
                self._remember_unopened(path, None)
        for path in changes.deleted:
            if path not in self._by_path:
                self._vanished(path)

    def _input(self, path: str) -> int | None:
        for idx, m in enumerate(self._matchers):
            if m.matches(path):
                return idx
        return None

    # -- opening ------------------------------------------------------------------------
    def _try_open(self, path: str, idx: int) -> None:
        inp = self._inputs[idx]
        found = self._target(path, idx)
        if found is None:
            return
        st, linked = found
        if not stat.S_ISREG(st.st_mode):
            self._not_regular(path, st)
            return
        key = f"{st.st_dev}:{st.st_ino}"
        known = self._by_key.get(key)
        if known is not None:
            self._unopened.pop(path, None)
            self._registry.seen(known.entry, time.time())
            return
        # An empty file has nothing to read and nothing to tell it by yet: it is opened once
        # it has bytes (a write wakes us; the rescan is the safety net).
        if not st.st_size or self._nothing_to_read(path, key, st, inp):
            return
        if len(self._by_key) >= self._cfg.max_open_files and not self._make_room():
            if path not in self._deferred:
                if len(self._deferred) >= _MAX_REMEMBERED:
                    self._deferred.clear()
                self._deferred.add(path)
                self._ledger.event("open_deferred")
            self._remember_unopened(path, st.st_size)
            self._retry.add(path)
            return
        try:
            fd = os.open(path, OPEN_FLAGS)
        except OSError as exc:
            self._remember_unopened(path, st.st_size)
            if isinstance(exc, FileNotFoundError):
                self._vanished(path)
            else:
                self._open_failed(path, exc)
            return
        try:
            self._check_and_adopt(path, idx, fd, linked)
        except OSError as exc:
            os.close(fd)
            self._open_failed(path, exc)

    def _nothing_to_read(self, path: str, key: str, st: os.stat_result, inp: InputConfig) -> bool:
        """True (and noted) for a file closed idle with neither size nor mtime changed since,
        or too old to be read at all."""
        entry = self._registry.find(key)
        unchanged = entry is not None and self._registry.unchanged(entry, st)
        if unchanged:
            if len(self._unchanged) >= _MAX_REMEMBERED:
                self._unchanged.clear()
            self._unchanged.add(key)
        elif inp.ignore_older is None or time.time() - st.st_mtime <= inp.ignore_older:
            return False
        self._unopened.pop(path, None)
        self._first_seen.pop(path, None)
        if entry is not None:
            self._registry.seen(entry, time.time())
        return True

    def _target(self, path: str, idx: int) -> tuple[os.stat_result, bool] | None:  # noqa: PLR0911  # one exit per reason
        """The stat of what ``path`` names (through a link the input may follow) and whether
        it is a link; None when there is nothing to open (gone, a link not followed, a
        loop, a dangling link)."""
        try:
            lst = os.lstat(path)
        except FileNotFoundError:
            self._vanished(path)
            return None
        except OSError as exc:
            self._open_failed(path, exc)
            return None
        if not stat.S_ISLNK(lst.st_mode):
            return lst, False
        self._unopened.pop(path, None)
        if not self._inputs[idx].follow_symlinks:
            return None
        real = os.path.realpath(path)
        if not self._matchers[idx].inside_roots(real):
            self._ledger.event("symlink_outside_roots")
            self._warn("symlink_outside_roots", path=path, target=real)
            return None
        try:
            return os.stat(path), True
        except FileNotFoundError:
            self._flag("symlink_dangling", path, f"{lst.st_dev}:{lst.st_ino}")
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._flag("symlink_loop", path, f"{lst.st_dev}:{lst.st_ino}")
            else:
                self._open_failed(path, exc)
        return None

    def _check_and_adopt(self, path: str, idx: int, fd: int, linked: bool) -> None:
        """The descriptor decides: only a regular file not open yet is adopted."""
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            os.close(fd)
            self._not_regular(path, fst)
            return
        key = f"{fst.st_dev}:{fst.st_ino}"
        known = self._by_key.get(key)
        if known is not None:  # renamed between the stat and the open
            os.close(fd)
            self._registry.seen(known.entry, time.time())
            return
        self._unopened.pop(path, None)
        self._deferred.discard(path)
        self._unchanged.discard(key)
        self.unreadable_files.discard(path)
        self._adopt(path, idx, fd, fst, linked)

    def _not_regular(self, path: str, st: os.stat_result) -> None:
        """A FIFO, socket, device or directory under a matching name: never read."""
        self._unopened.pop(path, None)
        kind = (
            "fifo"
            if stat.S_ISFIFO(st.st_mode)
            else "socket"
            if stat.S_ISSOCK(st.st_mode)
            else "directory"
            if stat.S_ISDIR(st.st_mode)
            else "device"
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
            else "other"
        )
        self._flag("not_regular_file", path, f"{st.st_dev}:{st.st_ino}", kind=kind)

    def _flag(self, event: str, path: str, ident: str, **kw: Any) -> None:
        """Count and log ``event`` for ``path`` once (again only if its identity changes)."""
        key = (event, path)
        if self._flagged.get(key) == ident:
            return
        if len(self._flagged) >= _MAX_REMEMBERED:
            self._flagged.clear()
        self._flagged[key] = ident
        self._ledger.event(event)
        self._log.warning(event, path=path, **kw)

    def _remember_unopened(self, path: str, size: int | None) -> None:
        if len(self._unopened) >= _MAX_REMEMBERED:
            self._unopened.clear()
        self._unopened[path] = size

    def _vanished(self, path: str) -> None:
        """``path`` is gone: if we saw it and never opened it, its bytes went unread."""
        self.unreadable_files.discard(path)
        if path not in self._unopened:
            return
        size = self._unopened.pop(path)
        self._retry.discard(path)
        self._deferred.discard(path)
        self._first_seen.pop(path, None)
        self._ledger.event("files_deleted_unread")
        if size:
            self._ledger.lost_bytes("deleted_unread", size)
        self._warn("file_deleted_unread", path=path, bytes=size)

    def _open_failed(self, path: str, exc: OSError) -> None:
        self._retry.add(path)
        reason = errno.errorcode.get(exc.errno or 0, "error").lower()
        if exc.errno in (errno.EACCES, errno.EPERM):
            self.unreadable_files.add(path)
        if path not in self._unopened:
            self._remember_unopened(path, None)
        self._ledger.event(f"open_failed_{reason}")
        self._warn("file_open_failed", path=path, error=exc.strerror, errno=reason)

    def _adopt(self, path: str, idx: int, fd: int, st: os.stat_result, linked: bool) -> None:
        """Decide where to start reading a newly opened file, and track it."""
        head = os.pread(fd, self._cfg.fingerprint_bytes, 0)
        fp_len, fp = len(head), fingerprint(head)
        size = st.st_size
        entry = self._registry.find(f"{st.st_dev}:{st.st_ino}")
        mid_line = False  # resuming inside a line (after a crash, or a long line's rest)
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
                mid_line = entry.skip and start == entry.exact
        else:
            if entry is not None and entry.fp_len:
                # The file at this inode holds other content than we knew (rewritten while
                # we were away, or while it was closed): its old content may turn up as a
                # copy (copytruncate while stopped).
                unread = max((entry.closed_size or entry.exact) - entry.exact, 0)
                self._copies.truncated(entry.fp_len, entry.fp, entry.exact, unread)
            found = self._new_entry(path, idx, fd, st, head, known=entry is not None)
            if found is None:
                os.close(fd)
                return
            entry, start, how = found
        self._first_seen.pop(path, None)
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
        reader.always_poll = linked  # its target's directory may not be watched
        self._by_key[entry.key] = reader
        self._by_path[path] = reader
        self._copies.opened(path)
        self._copies.track(reader, head)
        self._ledger.event("files_opened")
        self._log.info("file_opened", path=path, offset=start, size=size, start=how)

    def _new_entry(
        self, path: str, idx: int, fd: int, st: os.stat_result, head: bytes, *, known: bool
    ) -> tuple[Entry, int, str] | None:
        """Registry entry and start offset for a file not known by this identity; None
        to look again later (a copy of a file being read, or an empty new file)."""
        size = st.st_size
        ident = f"{st.st_dev}:{st.st_ino}"
        copy = self._copies.match(path, ident, head, size, fd)
        if copy == DEFER:
            self._retry.add(path)
            return None
        if known:
            self._ledger.event("identity_changed")
        first = self._first_seen.get(path)
        if isinstance(copy, int):
            start, how = copy, "copy"
        elif first is not None and self._fresh_inputs and first in self._fresh_inputs:
            start, how = (size, "end") if self._inputs[idx].start_at == "end" else (0, "beginning")
            if start:
                self._ledger.skipped_bytes("start_at_end", start)
        elif first is not None and self._damaged:
            start, how = size, "end"
            if size:
                self._ledger.lost_bytes("registry_reset", size)
        else:
            start, how = 0, "beginning"
        entry = self._registry.add(
            dev=st.st_dev, ino=st.st_ino, fp_len=len(head), fp=fingerprint(head), path=path,
            start=start,
        )  # fmt: skip
        return entry, start, how

    def _resume_at(self, entry: Entry, fd: int, size: int) -> tuple[int, bool]:
        """Where to resume a file known from the registry on disk; True if inside a line."""
        start = min(entry.durable, size)
        if start <= entry.exact:
            return start, entry.skip and start == entry.exact
        # After a crash: skip what may have been read, up to the next line start.
        start, mid_line = line_start(fd, start, size)
        self._ledger.lost_bytes("lost_on_crash", start - entry.exact)
        self._registry.resumed_past(entry, start)
        return start, mid_line

    def _make_room(self) -> bool:
        """Close the longest-idle file that is not draining a rotation; False if none."""
        if self._room is None:
            idle = [
                r for r in self._by_key.values() if not r.rotated and r.idle and r.carry is None
            ]
            idle.sort(key=lambda r: r.last_growth, reverse=True)
            self._room = idle
        while self._room:
            victim = self._room.pop()
            if (
                self._by_key.get(victim.entry.key) is victim
                and victim.idle
                and victim.carry is None
            ):
                self._ledger.event("files_closed_for_room")
                self._close(victim, "room")
                return True
        return False

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
        # Renamed away, deleted, or replaced: keep draining the open descriptor, then close.
        r.rotated = True
        r.last_growth = time.monotonic()
        del self._by_path[r.path]
        self._ledger.event("files_rotated")
        self._log.info("file_rotated", path=r.path, offset=r.read_off)
        if st is not None:
            idx = self._input(r.path)
            if idx is not None:
                self._try_open(r.path, idx)

    def _read_all(self, dirty: set[FileReader] | None) -> bool:
        """One round over the open files (only those that may have grown unless ``dirty``
        is None); True if any has more to read right away.

        The reader holding lines the queue refused goes first; then rotated files (their
        lines are older than the new file's), then the others starting one further each
        round, so that a full queue is shared fairly. The round ends at the first refusal:
        at most one reader ever holds lines the queue did not take.
        """
        self._paced = False
        self._room = None
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
        order = [r for r in readers if r.rotated] + active
        if dirty is not None:
            order = [r for r in order if r.rotated or not r.idle or r in dirty]
        sizes = self._sizes(order)
        busy = False
        for r, size in sizes:
            more = self._read(r, size)
            if self._paced:
                return True
            busy = busy or more
        return busy

    def _sizes(self, readers: list[FileReader]) -> list[tuple[FileReader, int]]:
        """Each reader's size now, its truncation handled and its fingerprint extended; and
        one registry save that covers what this round may hand on, for every file that
        needs it (new files, used-up reservations). The fingerprint is brought up to date
        first: a position saved with the fingerprint of an empty file identifies nothing."""
        out: list[tuple[FileReader, int]] = []
        reg = self._registry
        need = False
        budget = self._cfg.read_budget
        for r in readers:
            try:
                size = os.fstat(r.fd).st_size
            except OSError:
                continue
            if size < r.read_off or (size > r.read_off and not self._same_file(r)):
                self._truncated(r, size)
            out.append((r, size))
            end = min(size, r.read_off + budget)
            if size > r.read_off and not reg.covered(r.entry, end):
                reg.want(r.entry, end)
                need = True
        self._save_failed = need and not reg.save()
        return out

    def _read(self, r: FileReader, size: int) -> bool:
        """Read ``r`` up to the per-round budget; True if more is waiting."""
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
        now = time.monotonic()
        r.last_growth = now
        if r.read_off > start:
            self.last_read = now
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
        reg = self._registry
        durable = (
            reg.advance(entry, end) if not self._save_failed or reg.covered(entry, end) else False
        )
        if not durable:
            self._ledger.rejected("registry_unwritable", len(chunk.lines), chunk.nbytes)
            self.degraded = True
            self._warn(
                "registry_unwritable",
                path=str(reg.path),
                error=reg.last_error,
                lines=len(chunk.lines),
            )
            reg.commit(entry, end)
            return True
        if self.degraded:
            self.degraded = False
            self._log.info("registry_recovered", path=str(reg.path))
        if force:
            self._put(chunk)
            rest = None
        else:
            rest = self._offer(chunk)
        if rest is not None:
            r.carry, r.carry_end = rest, end
            self._held = r
            self._paced = True
            reg.commit(entry, rest.base)
            return False
        reg.commit(entry, end)
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
            self._copies.track(r, head)
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
        self._copies.track(r, head)
        r.restart(size)

    # -- housekeeping -------------------------------------------------------------------
    def _housekeeping(self, now: float, forget: bool) -> None:
        self._close_idle(now)
        self._copies.expire(now)
        if forget and self._registry.forget_old(time.time(), set(self._by_key)):
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
        held = r.carry is not None
        if held:
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
        size = mtime = None
        if not held:
            try:
                fst = os.fstat(r.fd)
                if fst.st_size == r.read_off:  # nothing written since our last read
                    size, mtime = fst.st_size, fst.st_mtime_ns
            except OSError:
                pass
        skip = r.splitter.skipping and not held and r.entry.exact == r.read_off
        self._copies.untrack(r)
        r.close()
        self._by_key.pop(r.entry.key, None)
        if self._by_path.get(r.path) is r:
            del self._by_path[r.path]
        self._registry.closed(r.entry, size, mtime, skip)
        if gone:
            self._registry.forget(r.entry)
        self._ledger.event("files_closed")
        self._log.info("file_closed", path=r.path, offset=r.read_off, reason=reason)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, f"{event}:{kw.get('path', '')}", **kw)
