"""File positions that survive restarts, written so that no line is ever sent twice.

Each entry maps a file identity (device, inode and a fingerprint of its first bytes) to a
*durable* offset. The tailer calls ``advance(entry, end)`` before it hands lines ending at
``end`` downstream; when ``end`` passes the durable offset, the registry persists
``end + reserve`` (temp file, fsync, rename, fsync of the directory) first. Once the lines are
taken, ``commit(entry, end)`` records the exact position. After a crash the tailer resumes at
the durable offset, so a line can be skipped (counted ``lost_on_crash``) but never re-read. On
a clean stop the exact offsets are written. Only the registry changes its entries.

To keep fsync off the reading path, a background writer saves the next reservation while
the tailer still reads inside the current one (once a quarter is used). The snapshot to
write is always taken on the tailer's thread; the writer only writes and fsyncs, and the
tailer applies the saved offsets when it next asks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "Registry", "RegistryCorruptError"]

VERSION = 1


class RegistryCorruptError(Exception):
    """The registry file exists but cannot be parsed."""


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
    restored: bool = True  # loaded from disk and not yet reopened in this run
    want: int = 0  # a reservation asked for, not yet saved
    gen: int = 0  # bumped when the identity changes (truncation): older saves do not apply

    @property
    def key(self) -> str:
        """The identity key: ``dev:ino``."""
        return f"{self.dev}:{self.ino}"


@dataclass(slots=True, eq=False)
class _Job:
    """One background save: the bytes, what they promise, and how it went."""

    data: bytes
    applied: list[tuple[Entry, int, int]]
    done: bool = False
    ok: bool = False


class Registry:
    """In-memory entries plus an atomically rewritten JSON file."""

    def __init__(self, path: str, reserve: int, forget_after: float) -> None:
        self.path = Path(path)
        self.reserve_bytes = reserve
        self.forget_after = forget_after
        self._entries: dict[str, Entry] = {}
        self.existed = False  # a registry file was found at load (so this is a restart)
        self.healthy = True  # the last write succeeded
        self.last_error: str | None = None
        self.writes = 0
        self._job: _Job | None = None  # the background write in progress, if any
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- the background writer --------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread that saves reservations ahead of need."""
        self._thread = threading.Thread(target=self._run, name="shipper-registry", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Finish the write in progress and stop the writer thread."""
        self._drain()
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

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
        if self._thread is None or self._job is not None:
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

    def load(self) -> None:
        """Read the file; raise RegistryCorruptError (keeping a copy) if it is unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        self.existed = True
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != VERSION:
                raise ValueError(f"unsupported registry version {doc.get('version')!r}")  # noqa: TRY301  # one handler for every kind of corruption
            for e in doc["files"]:
                ent = Entry(
                    dev=int(e["dev"]),
                    ino=int(e["ino"]),
                    fp_len=int(e["fp_len"]),
                    fp=str(e["fp"]),
                    path=str(e["path"]),
                    durable=int(e["offset"]),
                    exact=int(e.get("exact", e["offset"])),
                    seen=float(e["seen"]),
                )
                self._entries[ent.key] = ent
        except (ValueError, KeyError, TypeError) as exc:
            self._entries.clear()
            backup = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                shutil.copyfile(self.path, backup)
            raise RegistryCorruptError(f"{exc}; a copy was kept at {backup}") from None

    # -- the entries ----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def find(self, key: str) -> Entry | None:
        """The entry of the file with identity key ``dev:ino``, if known."""
        return self._entries.get(key)

    def add(self, *, dev: int, ino: int, fp_len: int, fp: str, path: str, start: int) -> Entry:
        """Track a file not known by its identity; reading starts at ``start``.

        A start past 0 is saved at once (on failure the next ``advance`` retries; nothing is
        handed on before).
        """
        entry = Entry(
            dev=dev,
            ino=ino,
            fp_len=fp_len,
            fp=fp,
            path=path,
            durable=start,
            exact=start,
            seen=time.time(),
            restored=False,
        )
        self._entries[entry.key] = entry
        if start:
            self.save()
        return entry

    def opened(self, entry: Entry, path: str, now: float) -> None:
        """Note that ``entry``'s file was opened (again) under ``path``."""
        entry.path = path
        entry.seen = now
        entry.restored = False

    def seen(self, entry: Entry, now: float) -> None:
        """Note that ``entry``'s file still exists (so it is not forgotten)."""
        entry.seen = now

    def resumed_past(self, entry: Entry, start: int) -> None:
        """After a crash, reading resumes at ``start``, past the last exact position."""
        entry.exact = start

    def refingerprint(self, entry: Entry, fp_len: int, fp: str) -> None:
        """The file grew past its fingerprint: hash more of it (same identity)."""
        entry.fp_len, entry.fp = fp_len, fp

    def restart(self, entry: Entry, fp_len: int, fp: str) -> None:
        """The file was truncated: start over at offset 0 with new content."""
        entry.fp_len, entry.fp = fp_len, fp
        entry.exact = 0
        entry.durable = -1  # forces a save (with the new fingerprint) before new lines
        entry.want = 0
        entry.gen += 1

    def forget(self, entry: Entry) -> None:
        """Forget a file that was deleted."""
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]

    def forget_old(self, now: float, live: set[str]) -> int:
        """Drop entries of files not seen for ``forget_after`` seconds; return how many."""
        old = [
            k
            for k, e in self._entries.items()
            if k not in live and now - e.seen > self.forget_after
        ]
        for k in old:
            del self._entries[k]
        return len(old)

    def commit(self, entry: Entry, exact: int) -> None:
        """Every line before ``exact`` was handed on (or counted): record the position."""
        entry.exact = exact

    def advance(self, entry: Entry, end: int) -> bool:
        """Make sure ``entry``'s durable offset covers ``end``; False if that cannot be saved.

        Blocks on a save only when ``end`` is past what is durable; once half of the
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
            files.append(
                {
                    "dev": e.dev,
                    "ino": e.ino,
                    "fp_len": e.fp_len,
                    "fp": e.fp,
                    "path": e.path,
                    "offset": off,
                    "exact": e.exact,
                    "seen": round(e.seen, 3),
                }
            )
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
        return ok

    def _write(self, data: bytes) -> bool:
        """Write ``data`` atomically: temp file, fsync, rename, fsync of the directory."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if not self.writes:
                self.path.parent.mkdir(parents=True, exist_ok=True)
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
