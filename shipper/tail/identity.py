"""File identity beyond the inode: fingerprints of the first bytes, where to resume inside a
file, and the copies that copytruncate makes of files we were reading.

A file is its device and inode plus a hash of its first ``fingerprint_bytes``. That tells
inode reuse, delete-and-recreate and truncate-then-rewrite (new content) apart from growth.
When a file is truncated, what it held is remembered (``rotate_wait``, at least
``ORPHAN_KEEP``): a new file whose fingerprint matches is copytruncate's copy and is read from
where the truncated file stopped.
A new file is taken for a copy of a file being read only on proof (``is_copy_of``: the same
first bytes, no larger, and the same bytes where it ends); equal first bytes alone are not.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from shipper.ledger import Ledger

if TYPE_CHECKING:
    from shipper.tail.reader import FileReader
    from shipper.tail.registry import Entry, Registry

__all__ = [
    "DEFER",
    "MIN_PREFIX",
    "OPEN_FLAGS",
    "ORPHAN_KEEP",
    "Copies",
    "comparable",
    "fingerprint",
    "is_copy_of",
    "line_start",
    "original_of",
    "same_tail",
    "starts_as",
]

#: How log files are opened: never as a controlling terminal, never blocking on a FIFO.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK

#: ``Copies.match`` result: look at this file again later.
DEFER: Literal["defer"] = "defer"
#: A truncated file's old identity waits at least this long for its copy: the copy is found
#: by an inotify event or a rescan, which a loaded machine may deliver late, and a copy found
#: after its orphan is gone would be read from its start (every line read before twice).
ORPHAN_KEEP = 10.0
#: Files are indexed by this many first bytes (fewer when shorter) to find copy candidates
#: without looking at every open file.
_INDEX_BYTES = 64


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


#: A fingerprint shorter than this identifies a file only against a head of just its length.
MIN_PREFIX = 64


def comparable(fp_len: int, head_len: int) -> bool:
    """True when a fingerprint of the first ``fp_len`` bytes may identify a file whose first
    ``head_len`` bytes we hold: the same length, or a prefix long enough to mean something
    (a few bytes, or none, would match any file starting alike)."""
    return 0 < fp_len <= head_len and (fp_len == head_len or fp_len >= MIN_PREFIX)


def same_tail(fd_a: int, fd_b: int, size: int, window: int = 4096) -> bool:
    """True when two files hold the same bytes in the ``window`` bytes before ``size``."""
    at = max(size - window, 0)
    try:
        return os.pread(fd_a, size - at, at) == os.pread(fd_b, size - at, at)
    except OSError:
        return False


def starts_as(fd: int, fp_len: int, fp: str) -> bool:
    """True when the file on ``fd`` still starts with the bytes fingerprinted ``fp``."""
    try:
        return fingerprint(os.pread(fd, fp_len, 0)) == fp
    except OSError:
        return True  # no evidence that it changed


def _truncated_since(fd: int, seen: int, fp_len: int, fp: str) -> bool:
    """True when the file on ``fd``, of which we saw ``seen`` bytes starting with the bytes
    fingerprinted ``fp``, is now shorter or starts otherwise (truncated, maybe rewritten)."""
    try:
        return os.fstat(fd).st_size < seen or not starts_as(fd, fp_len, fp)
    except OSError:
        return False


def is_copy_of(fd: int, size: int, head: bytes, of_fd: int, of_size: int) -> bool:
    """True when the file on ``fd`` (``size`` bytes starting with ``head``) holds what the
    file on ``of_fd`` holds in its first ``size`` bytes: the same beginning, no longer, and
    the same bytes where the copy ends. Equal first bytes alone prove nothing (two logs may
    start with the same header; a sparse file may start like another)."""
    if size > of_size:
        return False
    try:
        if os.pread(of_fd, len(head), 0) != head:
            return False
    except OSError:
        return False
    return size <= len(head) or same_tail(fd, of_fd, size)


def original_of(
    fd: int, size: int, head: bytes, of_fd: int, *, seen: int, fp_len: int, fp: str
) -> Literal["copy", "truncated"] | None:
    """How a new file (on ``fd``, ``size`` bytes starting with ``head``) relates to a known
    file on ``of_fd``, of which we saw ``seen`` bytes starting with the bytes fingerprinted
    ``fp``: ``"copy"`` when it holds what the known file holds now (copytruncate's copy,
    made, not yet truncated), ``"truncated"`` when it starts like what the known file held
    before it was truncated or rewritten since, None when neither.

    The byte proof comes first and the truncation is looked for after it, with a fresh
    ``fstat``: copytruncate truncates right after it copies, and a truncation landing between
    two looks in the other order would fail both (the copy then read from 0, twice)."""
    try:
        of_size = os.fstat(of_fd).st_size
    except OSError:
        return None
    if is_copy_of(fd, size, head, of_fd, of_size):
        return "copy"
    if (
        comparable(fp_len, len(head))
        and fingerprint(head[:fp_len]) == fp
        and _truncated_since(of_fd, seen, fp_len, fp)
    ):
        return "truncated"
    return None


@dataclass(slots=True)
class _Orphan:
    """The identity a file had before it was truncated (or rewritten while we were away),
    and where we were in it."""

    fp_len: int
    fp: str
    offset: int  # exact position reached in the old content
    lost: int  # bytes of the old content seen but not read
    expires: float


class Copies:
    """Remembers truncated files so that copytruncate's copy is read from where we stopped,
    and recognises copies of known files, open (being read) or not (closed, or known from
    the registry on disk). Every byte not read because it was read from the original is
    counted (``bytes_skipped``)."""

    def __init__(
        self,
        rotate_wait: float,
        ledger: Ledger,
        warn: Callable[..., None],
        *,
        found_within: float = 0.0,
        registry: Registry | None = None,
        info: Callable[..., None] | None = None,
    ) -> None:
        self._rotate_wait = rotate_wait
        # How long a truncated file's old identity waits for its copy: ``rotate_wait`` after
        # the copy may first be found (``found_within``: by a rescan only, at worst), and at
        # least ORPHAN_KEEP (a loaded machine finds it late).
        self._keep = max(rotate_wait + found_within, ORPHAN_KEEP)
        self._ledger = ledger
        self._warn = warn
        self._info = info or (lambda *_a, **_k: None)
        self._registry = registry  # files known but not open, for copies made while closed
        self._orphans: list[_Orphan] = []
        # A copy being made, by path: its identity (a path is reused by the next rotation)
        # and size, and when to stop waiting for its original's truncation.
        self._pending: dict[str, tuple[str, int, float]] = {}
        self._heads: dict[FileReader, bytes] = {}  # open files' first bytes ...
        self._index: dict[bytes, set[FileReader]] = {}  # ... and the files by their start

    def track(self, r: FileReader, head: bytes) -> None:
        """``r`` is open and starts with ``head`` (its first ``fingerprint_bytes``)."""
        self.untrack(r)
        self._heads[r] = head
        self._index.setdefault(head[:_INDEX_BYTES], set()).add(r)

    def untrack(self, r: FileReader) -> None:
        """``r`` was closed."""
        head = self._heads.pop(r, None)
        if head is not None:
            bucket = self._index[head[:_INDEX_BYTES]]
            bucket.discard(r)
            if not bucket:
                del self._index[head[:_INDEX_BYTES]]

    @property
    def pending(self) -> list[str]:
        """Paths of copies waiting for their original's truncation (look at them again)."""
        return list(self._pending)

    def opened(self, path: str) -> None:
        """``path`` was opened: it no longer waits."""
        self._pending.pop(path, None)

    def truncated(self, fp_len: int, fp: str, offset: int, unread: int) -> None:
        """A file with fingerprint ``fp`` was truncated (or found rewritten) after we read it
        up to ``offset``, with ``unread`` bytes seen in it but not read: remember it for its
        copy. Copies waiting (``pending``) are to be looked at again now."""
        self._orphans.append(
            _Orphan(
                fp_len=fp_len,
                fp=fp,
                offset=offset,
                lost=unread,
                expires=time.monotonic() + self._keep,
            )
        )

    def waits(self, path: str, ident: str, size: int) -> bool:
        """True while the copy at ``path`` (identity ``ident``, ``size`` bytes) may wait for
        a truncation: ``rotate_wait`` after it last grew. A copy still being made (slowly,
        on a loaded machine) is never opened at the size it has so far: what it gets next
        was read from the original."""
        now = time.monotonic()
        got = self._pending.get(path)
        if got is None or got[0] != ident or got[1] != size:
            got = self._pending[path] = (ident, size, now + self._rotate_wait)
        if now < got[2]:
            return True
        del self._pending[path]
        return False

    def match(
        self, path: str, ident: str, head: bytes, size: int, fd: int
    ) -> int | Literal["defer"] | None:
        """Where to start reading a new file at ``path`` (identity ``ident``, on ``fd``,
        ``size`` bytes starting with ``head``) that may be a copy of a known one: an offset,
        ``DEFER`` to look again later, or None when it is no copy.

        Looked for, in order: a file truncated lately (its copy is read from where we
        stopped), an open file, a file known but not open now. Only files that start with
        the same ``_INDEX_BYTES`` (open) or the same fingerprint (not open) are candidates,
        so a new file costs the same however many files are known. Not found so: a copy
        shorter than that of a file that has grown past it since.
        """
        if not head:
            # Nothing to tell it by yet (copytruncate's copy is empty when created): look
            # again once it has bytes, or copied content would be read as new.
            return DEFER
        start = self._orphan_start(head, size)
        if start is not None:
            return start
        found = self._copy_of_open(path, ident, head, size, fd)
        if found is None:
            found = self._copy_of_closed(path, ident, head, size, fd)
        return found

    def _orphan_start(self, head: bytes, size: int) -> int | None:
        """Where to read a copy of a file truncated lately; None if it is none."""
        for o in self._orphans:
            if comparable(o.fp_len, len(head)) and fingerprint(head[: o.fp_len]) == o.fp:
                self._orphans.remove(o)
                self._ledger.event("copy_resumed")
                # The copy ends before what we read when the app wrote between the copy and
                # the truncation: nothing in it is new then. Bytes we saw but neither read
                # nor find in the copy are lost.
                lost = o.offset + o.lost - max(o.offset, size)
                if lost > 0:
                    self._ledger.lost_bytes("truncated_unread", lost)
                    self._warn("bytes_lost", reason="truncated_unread", bytes=lost)
                start = min(o.offset, size)
                self._ledger.skipped_bytes("copy_resumed", start)
                return start
        return None

    def _copy_of_open(
        self, path: str, ident: str, head: bytes, size: int, fd: int
    ) -> int | Literal["defer"] | None:
        """Where to read a copy of a file open now: wait for its truncation (DEFER), then
        skip it whole; None if it is none."""
        for r in list(self._index.get(head[:_INDEX_BYTES], ())):
            if r.rotated or r.path == path:
                continue
            e = r.entry
            # A copy of a file we are reading (copytruncate's first step): wait for the
            # truncation so the copy is read exactly from where we stopped. A copy of what
            # ``r`` held before a truncation we have not handled yet: that truncation turns
            # it into an orphan in a moment. Should neither come, it is a plain copy, or the
            # old content of a file we read: every byte of it was read from the original.
            if original_of(
                fd, size, head, r.fd, seen=max(r.read_off, r.size_seen), fp_len=e.fp_len, fp=e.fp
            ):
                if self.waits(path, ident, size):
                    return DEFER
                self.skipped(path, size, of=r.path)
                return size
        return None

    def _copy_of_closed(
        self, path: str, ident: str, head: bytes, size: int, fd: int
    ) -> int | Literal["defer"] | None:
        """Where to read a copy of a file known but not open now (from the registry on
        disk, or closed in this run: inactive, for room). copytruncate while we were stopped
        or while it was closed: the original holds other content now, so the copy is read
        from where we stopped in it. A copy of it as it is: wait for a truncation (DEFER),
        then skip it whole (the original is read). None if it is none."""
        if self._registry is None:
            return None
        for e in self._registry.closed_like(head, fingerprint, comparable):
            try:
                ofd = os.open(e.path, OPEN_FLAGS)
            except OSError:
                continue
            try:
                ost = os.fstat(ofd)
                if f"{ost.st_dev}:{ost.st_ino}" != e.key or not stat.S_ISREG(ost.st_mode):
                    continue  # no evidence: the original is gone or was replaced
                how = original_of(fd, size, head, ofd, seen=e.exact, fp_len=e.fp_len, fp=e.fp)
                if how == "copy":
                    if self.waits(path, ident, size):
                        return DEFER
                    self.skipped(path, size, of=e.path)
                    return size
                if how == "truncated":
                    return self._resume(path, fd, size, e)
            except OSError:
                continue
            finally:
                os.close(ofd)
        return None

    def _resume(self, path: str, fd: int, size: int, e: Entry) -> int:
        """Where to read the copy on ``fd`` (``size`` bytes) of the file known as ``e``: where
        we stopped in it, and after a crash past what may have been read."""
        start = min(max(e.exact, e.durable), size)
        if start > e.exact:  # after a crash: skip what may have been read
            start, _ = line_start(fd, start, size)
            self._ledger.lost_bytes("lost_on_crash", max(start - e.exact, 0))
        self._ledger.event("copy_resumed")
        self._ledger.skipped_bytes("copy_resumed", start)
        self._info("copy_resumed", path=path, copy_of=e.path, offset=start)
        return start

    def skipped(self, path: str, size: int, of: str) -> None:
        """Count a copy of a known file not read (its bytes are read from ``of``)."""
        self._ledger.event("copy_skipped")
        self._ledger.skipped_bytes("copy", size)
        self._warn("copy_skipped", path=path, bytes=size, copy_of=of)

    def expire(self, now: float | None = None) -> None:
        """Count truncation losses no copy turned up for; forget stale pending copies.
        Without ``now`` (at stop): every truncation still waiting for its copy."""
        for o in [o for o in self._orphans if now is None or now >= o.expires]:
            self._orphans.remove(o)
            if o.lost:
                self._ledger.lost_bytes("truncated_unread", o.lost)
                self._warn("bytes_lost", reason="truncated_unread", bytes=o.lost)
        for path, (_, _, give_up) in list(self._pending.items()):
            if now is None or now > give_up + self._rotate_wait * 2:
                del self._pending[path]

    def __repr__(self) -> str:
        state: dict[str, Any] = {"orphans": len(self._orphans), "pending": len(self._pending)}
        return f"Copies({state})"
