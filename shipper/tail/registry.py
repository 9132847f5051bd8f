"""File positions that survive restarts, written so that no line is ever sent twice.

Each entry maps a file identity (device, inode and a fingerprint of its first bytes) to a
*durable* offset. The tailer asks ``reserve(entry, end)`` before it hands lines ending at
``end`` to the queue; when ``end`` passes the durable offset, the registry persists
``end + reserve`` (temp file, fsync, rename, fsync of the directory) first. After a crash the
tailer resumes at the durable offset, so a line can be skipped (counted ``lost_on_crash``)
but never re-read. On a clean stop the exact offsets are written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Entry", "Registry", "RegistryCorruptError"]

VERSION = 1


class RegistryCorruptError(Exception):
    """The registry file exists but cannot be parsed."""


@dataclass(slots=True)
class Entry:
    """What we know about one file across restarts."""

    dev: int
    ino: int
    fp_len: int
    fp: str
    path: str
    durable: int  # offset persisted on disk: nothing past it was handed on before it was saved
    exact: int  # offset of the first byte not yet turned into a line (on disk: as of the save)
    seen: float  # wall-clock time the file was last seen
    restored: bool = True  # loaded from disk and not yet reopened in this run

    @property
    def key(self) -> str:
        """The identity key: ``dev:ino``."""
        return f"{self.dev}:{self.ino}"


class Registry:
    """In-memory entries plus an atomically rewritten JSON file."""

    def __init__(self, path: str, reserve: int, forget_after: float) -> None:
        self.path = Path(path)
        self.reserve_bytes = reserve
        self.forget_after = forget_after
        self.entries: dict[str, Entry] = {}
        self.existed = False  # a registry file was found at load (so this is a restart)
        self.healthy = True  # the last write succeeded
        self.last_error: str | None = None
        self.writes = 0

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
                    dev=int(e["dev"]), ino=int(e["ino"]), fp_len=int(e["fp_len"]),
                    fp=str(e["fp"]), path=str(e["path"]), durable=int(e["offset"]),
                    exact=int(e.get("exact", e["offset"])), seen=float(e["seen"]),
                )
                self.entries[ent.key] = ent
        except (ValueError, KeyError, TypeError) as exc:
            self.entries.clear()
            backup = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                shutil.copyfile(self.path, backup)
            raise RegistryCorruptError(f"{exc}; a copy was kept at {backup}") from None

    def forget_old(self, now: float, live: set[str]) -> int:
        """Drop entries of files not seen for ``forget_after`` seconds; return how many."""
        old = [k for k, e in self.entries.items()
               if k not in live and now - e.seen > self.forget_after]
        for k in old:
            del self.entries[k]
        return len(old)

    def reserve(self, entry: Entry, end: int) -> bool:
        """Make sure ``entry``'s durable offset covers ``end``; False if that cannot be saved."""
        if end <= entry.durable:
            return True
        old = entry.durable
        entry.durable = end + self.reserve_bytes
        if self.save():
            return True
        entry.durable = old
        return False

    def save(self, exact: bool = False) -> bool:
        """Rewrite the file atomically; with ``exact``, store exact offsets (clean stop)."""
        files = []
        for e in self.entries.values():
            if exact:
                e.durable = e.exact
            files.append({
                # durable is -1 after a truncation until the next reserve: nothing past
                # exact was handed on then, so exact is the position to resume at.
                "dev": e.dev, "ino": e.ino, "fp_len": e.fp_len, "fp": e.fp,
                "path": e.path, "offset": max(e.durable, e.exact), "exact": e.exact,
                "seen": round(e.seen, 3),
            })
        data = json.dumps({"version": VERSION, "files": files}, separators=(",", ":")).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
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

    def snapshot_entries(self) -> list[dict[str, Any]]:
        """Entries as plain dicts, for tests and debugging."""
        return [
            {"path": e.path, "dev": e.dev, "ino": e.ino, "durable": e.durable, "exact": e.exact}
            for e in self.entries.values()
        ]
