"""File positions that survive restarts, written so that no line is ever sent twice.

Each entry maps a file identity (device, inode and a fingerprint of its first bytes) to a
*durable* offset. The tailer makes sure ``end`` is covered (``covered``/``want``/``save``, or
``advance``) before it hands lines ending at ``end`` downstream: when ``end`` passes the
durable offset, the registry persists ``end + reserve`` (temp file, fsync, rename, fsync of
the directory) first. Once the lines are taken, ``commit(entry, end)`` records the exact
position. After a crash the tailer resumes at the durable offset, so a line can be skipped
(counted ``lost_on_crash``) but never re-read. On a clean stop the exact offsets are written.
Only the registry changes its entries.

One process owns a registry: ``lock`` takes an exclusive ``flock`` on ``<path>.lock`` for the
life of the process, and nothing is written without it. Loading never stops the daemon: the
file is read as a stream, one entry at a time; a malformed entry is dropped and counted, at
most ``max_entries`` are kept (the most recently seen), and a file that is not a registry at
all is set aside (``RegistryCorruptError``).

To keep fsync off the reading path, a background writer saves the next reservation while
the tailer still reads inside the current one (once a quarter is used). The snapshot to
write is always taken on the tailer's thread; the writer only writes and fsyncs, and the
tailer applies the saved offsets when it next asks.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shipper.errors import RegistryLockedError

__all__ = ["Entry", "LoadReport", "Registry", "RegistryCorruptError"]

VERSION = 1
#: Largest single value (one entry) read from a registry file, in characters.
MAX_ITEM_CHARS = 64 * 1024
_BLOCK = 1024 * 1024  # bytes read at a time while loading
_MAX_OFFSET = (1 << 63) - 1
_MAX_ID = (1 << 64) - 1
_MAX_PATH = 16 * 1024  # characters (a 4 KiB path with every byte escaped)
_MAX_FP_LEN = 1 << 20
_FP_RE = re.compile(r"[0-9a-f]{0,128}\Z")
_WS = re.compile(r"[ \t\n\r]*")


def _bounded_int(text: str) -> int | None:
    """A JSON integer, or None when it has more digits than any offset (Python refuses
    to convert more than 4300 digits, which would stop the stream)."""
    return int(text) if len(text) <= 40 else None


# One value at a time (the slow path, where a bulk decode failed): absurd numbers become
# None, so the entry holding one is dropped alone.
_DECODER = json.JSONDecoder(parse_int=_bounded_int)

Count = Callable[[str, int], None]


class RegistryCorruptError(Exception):
    """The registry file exists but holds no registry at all (it was set aside)."""


@dataclass(slots=True)
class Entry:
    """What we know about one file across restarts; read it freely, change it via Registry."""

    dev: int
    ino: int
    fp_len: int
    fp: str
    path: str
    durable: int  # offset persisted on disk: nothing past it was handed on before it was saved
    exact: int  # offset of the first byte not yet turned into a line (on disk: as of the save)
    seen: float  # wall-clock time the file was last seen
    restored: bool = True  # loaded from disk (or kept over a rebuild), not yet reopened
    want: int = 0  # a reservation asked for, not yet saved
    gen: int = 0  # bumped when the identity changes (truncation): older saves do not apply
    skip: bool = False  # exact is inside a long line whose rest is skipped up to its newline
    closed_size: int | None = None  # size and mtime (ns) when the file was last closed:
    closed_mtime: int | None = None  # unchanged since, it need not be opened again
    open: bool = False  # a reader holds the file now

    @property
    def key(self) -> str:
        """The identity key: ``dev:ino``."""
        return f"{self.dev}:{self.ino}"


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What loading found: whether a file existed, and what of it was not kept."""

    existed: bool = False
    entries: int = 0
    dropped: int = 0  # malformed entries (or the unreadable rest of a damaged file)
    trimmed: int = 0  # well-formed entries over ``max_entries`` (the least recently seen)
    problem: str | None = None  # what was wrong, for the log

    @property
    def damaged(self) -> bool:
        """Some positions were not kept: files not found in it may have been read before."""
        return bool(self.dropped or self.trimmed or self.problem)


@dataclass(slots=True, eq=False)
class _Job:
    """One background save: the bytes, what they promise, and how it went."""

    data: bytes
    applied: list[tuple[Entry, int, int]]
    done: bool = False
    ok: bool = False


class _BadRegistryError(Exception):
    """The registry's structure is broken at this point."""


# -- loading ----------------------------------------------------------------------------------
class _Stream:
    """A JSON text read one value at a time: at most one value (``MAX_ITEM_CHARS``) plus one
    block is held in memory, whatever the file's size."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._dec = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False

    def _more(self) -> bool:
        if self.eof:
            return False
        data = self._f.read(_BLOCK)
        if self.pos > _BLOCK:
            self.buf = self.buf[self.pos :]
            self.pos = 0
        try:
            self.buf += self._dec.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            raise _BadRegistryError(f"not UTF-8 text ({exc.reason})") from None
        if not data:
            self.eof = True
        return True

    def peek(self) -> str:
        """The next character that is not white space ('' at the end)."""
        if self.pos < len(self.buf) and self.buf[self.pos] not in " \t\n\r":
            return self.buf[self.pos]  # the common case: no white space
        while True:
            m = _WS.match(self.buf, self.pos)
            self.pos = m.end() if m else self.pos
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, ch: str) -> None:
        """Consume ``ch`` or fail."""
        got = self.peek()
        if got != ch:
            raise _BadRegistryError(f"expected {ch!r}, found {got[:1]!r}")
        self.pos += 1

    def bulk(self) -> list[Any] | None:
        """The whole array items the buffer holds from here, decoded at once (C speed), up
        to the last ``},`` in the next block; None when that does not decode cleanly
        (the items are then read one by one, which finds the bad one).

        Cutting right after a ``}`` that is followed by ``,`` and closing with ``]`` is valid
        JSON only where that ``}`` ends an item at the array's own level: inside a string
        or a nested object the text would be left open.
        """
        self.peek()
        end = self.buf.rfind("},", self.pos, self.pos + _BLOCK)
        if end < 0:
            return None
        try:
            values = json.loads("[" + self.buf[self.pos : end + 1] + "]")
        except (ValueError, RecursionError):
            return None
        self.pos = end + 1
        return values if isinstance(values, list) else None

    def value(self) -> Any:
        """Decode the next value (at most ``MAX_ITEM_CHARS`` long)."""
        self.peek()
        while True:
            room = len(self.buf) - self.pos < MAX_ITEM_CHARS
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if room and self._more():
                    continue
                raise _BadRegistryError(f"invalid JSON ({exc.msg})") from None
            except (ValueError, RecursionError) as exc:  # 5000-digit numbers, deep nesting
                raise _BadRegistryError(f"unreadable value ({type(exc).__name__})") from None
            if end == len(self.buf) and room and self._more():
                continue  # a number may go on in the next block
            if end - self.pos > MAX_ITEM_CHARS:
                raise _BadRegistryError(f"a value longer than {MAX_ITEM_CHARS} characters")
            self.pos = end
            return value


def _values(f: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """Yield ``("version", v)`` and ``("file", raw entry)`` from a registry document; raise
    _BadRegistryError where its structure breaks (what was yielded before stays good)."""
    s = _Stream(f)
    s.expect("{")
    if s.peek() == "}":
        return
    while True:
        key = s.value()
        if not isinstance(key, str):
            raise _BadRegistryError("expected a key")
        s.expect(":")
        if key == "files":
            s.expect("[")
            yield from (("file", v) for v in _items(s))
        else:
            value = s.value()
            if key == "version":
                yield "version", value
        if _next(s, "}"):
            break
    if s.peek():
        raise _BadRegistryError("text after the end of the registry")


def _items(s: _Stream) -> Iterator[Any]:
    """The values of an array whose ``[`` was just read, many at a time where possible."""
    if s.peek() == "]":
        s.pos += 1
        return
    while True:
        values = s.bulk()
        if values is not None:
            yield from values
        else:
            yield s.value()
        if _next(s, "]"):
            return


def _next(s: _Stream, close: str) -> bool:
    """Consume ``,`` (False: another item follows) or ``close`` (True: the end)."""
    sep = s.peek()
    if sep not in (",", close):
        raise _BadRegistryError(f"expected ',' or {close!r}, found {sep[:1]!r}")
    s.pos += 1
    return sep == close


def _entry(raw: Any) -> Entry:
    """One entry from its JSON form; ValueError/KeyError/TypeError if it is malformed in
    any way (missing or mistyped fields, negative or absurd numbers, NaN, overlong
    strings). Exact types: a bool is no number, a float no offset."""
    if type(raw) is not dict:
        raise TypeError("an entry is not an object")
    dev, ino, fp_len, fp, path = raw["dev"], raw["ino"], raw["fp_len"], raw["fp"], raw["path"]
    offset, seen = raw["offset"], raw["seen"]
    exact = raw.get("exact", offset)
    skip = raw.get("skip", False)
    size, mtime = raw.get("closed_size"), raw.get("closed_mtime")
    if not (
        type(dev) is int
        and type(ino) is int
        and type(fp_len) is int
        and type(offset) is int
        and type(exact) is int
        and 0 <= dev <= _MAX_ID
        and 0 <= ino <= _MAX_ID
        and 0 <= fp_len <= _MAX_FP_LEN
        and 0 <= exact <= offset <= _MAX_OFFSET
    ):
        raise ValueError("dev, ino, fp_len, offset and exact must be whole numbers in range")
    if type(fp) is not str or not _FP_RE.match(fp) or type(path) is not str:
        raise ValueError("fp and path must be a hex string and a string")
    if len(path) > _MAX_PATH or type(skip) is not bool:
        raise ValueError("path too long, or skip not true or false")
    if type(seen) not in (int, float) or not math.isfinite(seen):
        raise ValueError("seen is not a finite number")
    if size is not None and not (
        type(size) is int and type(mtime) is int and 0 <= size <= _MAX_OFFSET and mtime >= 0
    ):
        raise ValueError("closed_size and closed_mtime must be whole numbers")
    return Entry(
        dev=dev,
        ino=ino,
        fp_len=fp_len,
        fp=fp,
        path=path,
        durable=offset,
        exact=exact,
        seen=float(seen),
        skip=skip and exact == offset,
        closed_size=size,
        closed_mtime=mtime if size is not None else None,
    )


class Registry:
    """In-memory entries plus an atomically rewritten JSON file, owned by one process."""

    def __init__(
        self,
        path: str,
        reserve: int,
        forget_after: float,
        max_entries: int = 100_000,
        count: Count | None = None,
    ) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.reserve_bytes = reserve
        self.forget_after = forget_after
        self.max_entries = max_entries
        self._count: Count = count or (lambda _name, _n: None)
        self._entries: dict[str, Entry] = {}
        # Entries whose file is not open (known from disk, or closed in this run), by
        # fingerprint length and fingerprint: built at the first look, then kept up to date.
        self._fp_index: dict[int, dict[str, dict[str, Entry]]] | None = None
        self.loaded = False
        self.dirty = False  # an entry starts past 0 and is not saved yet
        self.existed = False  # a registry file was found at load (so this is a restart)
        self.healthy = True  # the last write succeeded
        self.last_error: str | None = None
        self.writes = 0
        self._lock_fd: int | None = None
        self._pinned = False  # the lock is held for the life of the process (``lock``)
        self._tmp = self.path.with_name(f"{self.path.name}.tmp.{os.getpid()}")
        self._job: _Job | None = None  # the background write in progress, if any
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- ownership --------------------------------------------------------------------
    def lock(self) -> None:
        """Take the registry's lock for the life of the process (until ``release``).

        Raises RegistryLockedError when another process holds it. When the lock file cannot
        even be created (read-only or full filesystem), nothing can be saved either: every
        write retries the lock first and fails until it is held, so no line is sent.
        """
        self._pinned = True
        try:
            self._acquire()
        except OSError as exc:
            self.healthy = False
            self.last_error = f"cannot lock {self.lock_path}: {exc.strerror or exc}"

    def _acquire(self) -> None:
        """Take the lock (creating the directory and lock file); RegistryLockedError if
        another process holds it, OSError if it cannot be created."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).split(b"\n", 1)[0].strip()
            os.close(fd)
            pid = int(holder) if holder.isdigit() else None
            raise RegistryLockedError(str(self.path), pid) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = fd
        # Temp files of earlier owners are ours to remove now.
        for stale in self.path.parent.glob(f"{glob_escape(self.path.name)}.tmp*"):
            if stale != self._tmp:
                with contextlib.suppress(OSError):
                    stale.unlink()

    def _hold(self) -> None:
        """Make sure we hold the lock on the lock file that is on disk now (it is taken
        again after the directory was deleted); raise OSError if we cannot."""
        fd = self._lock_fd
        if fd is not None:
            try:
                on_disk = os.stat(self.lock_path)
                mine = os.fstat(fd)
                if (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino):
                    return
            except FileNotFoundError:
                pass
        try:
            self._acquire()
        except RegistryLockedError as exc:
            raise OSError(errno.EBUSY, str(exc)) from None

    def release(self) -> None:
        """Give up the lock (the process is about to exit)."""
        self._pinned = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- the background writer --------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread that saves reservations ahead of need."""
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="shipper-registry", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        """The background writer thread (for supervision)."""
        return self._thread

    def close(self) -> None:
        """Finish the write in progress and stop the writer thread (a lock taken only for
        writing, not by ``lock``, is released too)."""
        self._drain()
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._job = None
        if not self._pinned:
            self.release()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closing and (self._job is None or self._job.done):
                    self._wake.wait()
                if self._closing:
                    return
                job = self._job
            assert job is not None
            job.ok = self._write(job.data)
            with self._wake:
                job.done = True
                self._wake.notify_all()

    def _submit(self) -> None:
        """Start a background save of every wanted reservation, unless one is running."""
        self._collect()
        if self._thread is None or self._job is not None or not self._thread.is_alive():
            return
        data, applied = self._snapshot(exact=False)
        with self._wake:
            self._job = _Job(data, applied)
            self._wake.notify_all()

    def _collect(self) -> None:
        """Apply a finished background save."""
        job = self._job
        if job is None or not job.done:
            return
        self._job = None
        self._finish(job.ok, job.applied, exact=False)

    def _drain(self) -> None:
        """Wait for the background save in progress, then apply it."""
        job = self._job
        if job is None:
            return
        with self._wake:
            while not job.done and self._thread is not None and self._thread.is_alive():
                self._wake.wait(1.0)
        if not job.done:  # the writer is gone: its write may or may not have happened
            self._job = None
            return
        self._collect()

    # -- loading ----------------------------------------------------------------------
    def load(self) -> LoadReport:
        """Read the file as a stream of entries; keep the good ones.

        Raise RegistryCorruptError (keeping a copy) when no part of it is a registry.
        """
        self.loaded = True
        self._fp_index = None
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return LoadReport()
        except OSError as exc:
            self.existed = True
            raise RegistryCorruptError(f"cannot read it: {exc.strerror or exc}") from None
        self.existed = True
        version: object = None
        problem: str | None = None
        dropped = trimmed = 0
        entries = self._entries
        with f:
            try:
                for kind, raw in _values(f):
                    if kind == "version":
                        version = raw
                        if raw != VERSION:
                            break
                        continue
                    try:
                        e = _entry(raw)
                    except (ValueError, KeyError, TypeError):
                        dropped += 1
                        continue
                    key = f"{e.dev}:{e.ino}"
                    if entries.pop(key, None) is not None:
                        dropped += 1  # the same file twice: the later entry wins
                    entries[key] = e
                    if len(entries) > self.max_entries + self.max_entries // 4:
                        trimmed += self._trim(self.max_entries)
            except (_BadRegistryError, OSError) as exc:
                problem = str(exc)
        trimmed += self._trim(self.max_entries)
        if version != VERSION or (problem is not None and not entries):
            self._entries.clear()
            why = problem or f"unsupported registry version {str(version)[:40]!r}"
            raise RegistryCorruptError(f"{why}; a copy was kept at {self._set_aside()}")
        if problem is not None:
            dropped += 1
            problem = f"{problem}; the rest of the file was ignored, a copy was kept at " + str(
                self._set_aside()
            )
        elif dropped:
            problem = f"{dropped} malformed entries; a copy was kept at {self._set_aside()}"
        return LoadReport(True, len(entries), dropped, trimmed, problem)

    def _set_aside(self) -> Path:
        backup = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            shutil.copyfile(self.path, backup)
        return backup

    def _trim(self, keep: int, live: bool = False) -> int:
        """Keep the ``keep`` most recently seen entries (never one open, with ``live``);
        return how many were dropped."""
        over = len(self._entries) - keep
        if over <= 0:
            return 0
        victims = sorted(
            (e for e in self._entries.values() if not (live and e.open)), key=lambda e: e.seen
        )[:over]
        for e in victims:
            self._unindex(e)
            del self._entries[e.key]
        return len(victims)

    def resume(self) -> None:
        """Continue after the tailer was rebuilt (reload, a restarted thread): every entry is
        reopened from its exact position, which nothing past was handed on."""
        self._fp_index = None
        for e in self._entries.values():
            e.restored = True
            e.open = False
            e.durable = e.exact  # conservative: what lies beyond is saved again first
            e.want = 0

    # -- the entries ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def find(self, key: str) -> Entry | None:
        """The entry of the file with identity key ``dev:ino``, if known."""
        return self._entries.get(key)

    def closed_like(
        self,
        head: bytes,
        fingerprint: Callable[[bytes], str],
        comparable: Callable[[int, int], bool],
    ) -> list[Entry]:
        """Entries whose file is not open now (known from before this run or rebuild, or
        closed in it: inactive, for room), with the fingerprint of a file starting with
        ``head`` (over a length ``comparable`` says may identify it)."""
        index = self._fp_index
        if index is None:
            index = self._fp_index = {}
            for e in self._entries.values():
                self._index(e)
        out: list[Entry] = []
        for fp_len, by_fp in index.items():
            if comparable(fp_len, len(head)):
                out.extend(by_fp.get(fingerprint(head[:fp_len]), {}).values())
        return out

    def _index(self, e: Entry) -> None:
        if self._fp_index is not None and e.fp_len and not e.open:
            self._fp_index.setdefault(e.fp_len, {}).setdefault(e.fp, {})[e.key] = e

    def _unindex(self, e: Entry) -> None:
        index = self._fp_index
        if index is None:
            return
        by_fp = index.get(e.fp_len, {})
        group = by_fp.get(e.fp, {})
        if group.get(e.key) is e:
            del group[e.key]
            if not group:
                del by_fp[e.fp]
                if not by_fp:
                    del index[e.fp_len]

    def add(self, *, dev: int, ino: int, fp_len: int, fp: str, path: str, start: int) -> Entry:
        """Track a file not known by its identity; reading starts at ``start``.

        Nothing is saved now: the first lines handed on need a save anyway, and one save
        covers every file opened in the same round. A start past 0 (what lies before it
        was read from elsewhere, or is not wanted) sets ``dirty``: the caller saves before
        the round ends, or a crash would have the file read from 0.
        """
        entry = Entry(
            dev=dev,
            ino=ino,
            fp_len=fp_len,
            fp=fp,
            path=path,
            durable=-1,
            exact=start,
            seen=time.time(),
            restored=False,
        )
        old = self._entries.get(entry.key)
        if old is not None:
            self._unindex(old)
        self._entries[entry.key] = entry
        if start:
            self.dirty = True
        if len(self._entries) > self.max_entries:
            trimmed = self._trim(self.max_entries * 9 // 10, live=True)
            if trimmed:
                self._count("registry_entries_trimmed", trimmed)
        return entry

    def opened(self, entry: Entry, path: str, now: float) -> None:
        """Note that ``entry``'s file was opened (again) under ``path``."""
        self._unindex(entry)
        entry.path = path
        entry.seen = now
        entry.restored = False
        entry.open = True
        entry.closed_size = entry.closed_mtime = None
        entry.skip = False

    def closed(self, entry: Entry, size: int | None, mtime: int | None, skip: bool) -> None:
        """``entry``'s file was closed at its exact position, with this size and mtime (ns);
        ``skip``: that position is inside a long line being skipped."""
        entry.open = False
        entry.closed_size, entry.closed_mtime = size, mtime
        entry.skip = skip
        self._index(entry)
        # Nothing past exact was handed on: the next save may store exact, not a reservation.
        entry.durable = min(entry.durable, entry.exact)
        entry.want = 0

    def unchanged(self, entry: Entry, st: os.stat_result) -> bool:
        """True when ``entry``'s file was closed with this very size and mtime."""
        return (
            not entry.open
            and entry.closed_size == st.st_size
            and entry.closed_mtime == st.st_mtime_ns
        )

    def seen(self, entry: Entry, now: float) -> None:
        """Note that ``entry``'s file still exists (so it is not forgotten)."""
        entry.seen = now

    def resumed_past(self, entry: Entry, start: int) -> None:
        """After a crash, reading resumes at ``start``, past the last exact position."""
        entry.exact = start

    def refingerprint(self, entry: Entry, fp_len: int, fp: str) -> None:
        """The file grew past its fingerprint: hash more of it (same identity)."""
        self._unindex(entry)
        entry.fp_len, entry.fp = fp_len, fp
        self._index(entry)

    def restart(self, entry: Entry, fp_len: int, fp: str) -> None:
        """The file was truncated: start over at offset 0 with new content."""
        self._unindex(entry)
        entry.fp_len, entry.fp = fp_len, fp
        self._index(entry)
        entry.exact = 0
        entry.durable = -1  # forces a save (with the new fingerprint) before new lines
        entry.want = 0
        entry.gen += 1
        entry.skip = False

    def forget(self, entry: Entry) -> None:
        """Forget a file that was deleted."""
        if self._entries.get(entry.key) is entry:
            self._unindex(entry)
            del self._entries[entry.key]

    def forget_old(self, now: float, live: set[str]) -> int:
        """Drop entries of files not seen for ``forget_after`` seconds; return how many."""
        old = [
            k
            for k, e in self._entries.items()
            if k not in live and now - e.seen > self.forget_after
        ]
        for k in old:
            self._unindex(self._entries.pop(k))
        return len(old)

    def commit(self, entry: Entry, exact: int) -> None:
        """Every line before ``exact`` was handed on (or counted): record the position."""
        entry.exact = exact

    def covered(self, entry: Entry, end: int) -> bool:
        """True when lines ending at ``end`` may be handed on without a save first."""
        return end <= entry.durable

    def want(self, entry: Entry, end: int) -> None:
        """Ask the next save to cover ``end`` (plus the reservation)."""
        entry.want = max(entry.want, end + self.reserve_bytes)

    def advance(self, entry: Entry, end: int) -> bool:
        """Make sure ``entry``'s durable offset covers ``end``; False if that cannot be saved.

        Blocks on a save only when ``end`` is past what is durable; once a quarter of the
        reservation is used, the next one is saved in the background.
        """
        self._collect()
        ahead = end + self.reserve_bytes
        if end <= entry.durable:
            # Once a quarter of the reservation is used, save the next one in the background:
            # at full read speed the save then completes before the reservation runs out.
            if self._thread is not None and entry.durable - end < self.reserve_bytes * 3 // 4:
                entry.want = max(entry.want, ahead)
                self._submit()
            return True
        self._drain()
        if end <= entry.durable:
            return True
        entry.want = max(entry.want, ahead)
        return self.save()

    def _snapshot(self, exact: bool) -> tuple[bytes, list[tuple[Entry, int, int]]]:
        """Serialise every entry (on the tailer's thread): the bytes and what they promise."""
        files = []
        applied = []
        for e in list(self._entries.values()):
            # After a truncation durable is -1 until the next save: nothing past exact was
            # handed on then, so exact is a safe position to resume at.
            off = e.exact if exact else max(e.durable, e.want, e.exact)
            doc: dict[str, Any] = {
                "dev": e.dev,
                "ino": e.ino,
                "fp_len": e.fp_len,
                "fp": e.fp,
                "path": e.path,
                "offset": off,
                "exact": e.exact,
                "seen": round(e.seen, 3),
            }
            if e.skip and off == e.exact:
                doc["skip"] = True
            if e.closed_size is not None:
                doc["closed_size"] = e.closed_size
                doc["closed_mtime"] = e.closed_mtime
            files.append(doc)
            applied.append((e, e.gen, off))
        data = json.dumps({"version": VERSION, "files": files}, separators=(",", ":")).encode()
        return data, applied

    def _finish(self, ok: bool, applied: list[tuple[Entry, int, int]], exact: bool) -> None:
        if not ok:
            return
        for e, gen, off in applied:
            if e.gen == gen:
                e.durable = off if exact else max(e.durable, off)

    def save(self, exact: bool = False) -> bool:
        """Rewrite the file now; with ``exact``, store exact offsets (clean stop)."""
        self._drain()
        data, applied = self._snapshot(exact)
        ok = self._write(data)
        self._finish(ok, applied, exact)
        if ok:
            self.dirty = False
        return ok

    def _write(self, data: bytes) -> bool:
        """Write ``data`` atomically: temp file, fsync, rename, fsync of the directory.

        The lock is checked first (and taken again if its file vanished with a deleted
        directory, which is created again).
        """
        tmp = self._tmp
        try:
            self._hold()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            self.healthy = False
            self.last_error = f"{exc.strerror or exc}"
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self.healthy = True
        self.last_error = None
        self.writes += 1
        return True


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped (for Path.glob)."""
    return re.sub(r"([*?\[])", r"[\1]", name)
