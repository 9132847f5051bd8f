"""File identity beyond the inode: fingerprints of the first bytes, where to resume inside a
file, and the copies that copytruncate makes of files we were reading.

A file is its device and inode plus a hash of its first ``fingerprint_bytes``. That tells
inode reuse, delete-and-recreate and truncate-then-rewrite (new content) apart from growth.
When a file is truncated, what it held is remembered for ``rotate_wait``: a new file whose
fingerprint matches is copytruncate's copy and is read from where the truncated file stopped.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shipper.ledger import Ledger

if TYPE_CHECKING:
    from shipper.tail.reader import FileReader

__all__ = ["DEFER", "Copies", "fingerprint", "line_start"]

#: ``Copies.match`` result: look at this file again later.
DEFER: Literal["defer"] = "defer"


def fingerprint(data: bytes) -> str:
    """The identity hash of a file's first bytes."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def line_start(fd: int, off: int, size: int) -> tuple[int, bool]:
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
    """The identity a file had before it was truncated, and where we were in it."""

    fp_len: int
    fp: str
    offset: int  # exact position reached in the old content
    lost: int  # bytes of the old content seen but not read
    expires: float


class Copies:
    """Remembers truncated files so that copytruncate's copy is read from where we stopped."""

    def __init__(self, rotate_wait: float, ledger: Ledger, warn: Callable[..., None]) -> None:
        self._rotate_wait = rotate_wait
        self._ledger = ledger
        self._warn = warn
        self._orphans: list[_Orphan] = []
        self._pending: dict[str, float] = {}  # path of a copy being made -> give-up time

    @property
    def pending(self) -> list[str]:
        """Paths of copies waiting for their original's truncation (look at them again)."""
        return list(self._pending)

    def opened(self, path: str) -> None:
        """``path`` was opened: it no longer waits."""
        self._pending.pop(path, None)

    def truncated(self, fp_len: int, fp: str, offset: int, unread: int) -> None:
        """A file with fingerprint ``fp`` was truncated after we read it up to ``offset``,
        with ``unread`` bytes seen in it but not read."""
        self._orphans.append(
            _Orphan(
                fp_len=fp_len,
                fp=fp,
                offset=offset,
                lost=unread,
                expires=time.monotonic() + self._rotate_wait,
            )
        )
        # Copies that waited for this truncation may now be read from where we stopped.
        for path in self._pending:
            self._pending[path] = 0.0

    def match(
        self, path: str, fp_len: int, fp: str, size: int, readers: Iterable[FileReader]
    ) -> int | Literal["defer"] | None:
        """Where to start reading a new file at ``path`` that may be a copy of a known one:
        an offset, ``DEFER`` to look again later, or None when it is no copy."""
        if fp_len == 0:
            # Nothing to tell it by yet (copytruncate's copy is empty when created): look
            # again once it has bytes, or copied content would be read as new.
            return DEFER
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
        for r in readers:
            if r.rotated or r.path == path or r.entry.fp_len < fp_len:
                continue
            same = r.entry.fp_len == fp_len and r.entry.fp == fp
            if not same:
                try:
                    same = fingerprint(os.pread(r.fd, fp_len, 0)) == fp
                except OSError:
                    same = False
            if same:
                # A copy of a file we are reading (copytruncate's first step): wait for the
                # truncation so the copy is read exactly from where we stopped.
                give_up = self._pending.setdefault(path, time.monotonic() + self._rotate_wait)
                if time.monotonic() < give_up:
                    return DEFER
                self._ledger.event("copy_skipped")
                return size
        return None

    def expire(self, now: float) -> None:
        """Count truncation losses no copy turned up for; forget stale pending copies."""
        for o in [o for o in self._orphans if now >= o.expires]:
            self._orphans.remove(o)
            if o.lost:
                self._ledger.lost_bytes("truncated_unread", o.lost)
                self._warn("bytes_lost", reason="truncated_unread", bytes=o.lost)
        for path, give_up in list(self._pending.items()):
            if give_up and now > give_up + self._rotate_wait * 2:
                del self._pending[path]

    def __repr__(self) -> str:
        state: dict[str, Any] = {"orphans": len(self._orphans), "pending": len(self._pending)}
        return f"Copies({state})"
