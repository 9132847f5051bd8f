"""The bounded in-memory queue between tailer and sender, and its drop policy.

Chunks go in and come out; the queue owns its deque, its counts and its lock, and reports
every line it admits or drops to the ledger in the same step that decides it.

- ``put`` never blocks: what does not fit is dropped by the ``when_full`` policy and counted
  as ``queue_full``.
- ``offer`` is how the tailer paces reading while Kafka is taking lines: it admits the longest
  prefix that fits and hands back the rest, so a backlog waits in the file, not in memory;
  ``wait_for_room`` sleeps until a ``take`` frees room. The sender calls ``delivered`` each
  time Kafka confirms lines (a fence's answer); when that has not happened for
  ``stall_timeout`` while lines wait (Kafka down or stalled), the queue is *stalled*:
  ``offer`` then behaves like ``put``, reading keeps up with the files and the overflow is
  dropped.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Hashable
from itertools import accumulate
from operator import add

from shipper.chunk import LINE_OVERHEAD, OFFSET_OVERHEAD, Chunk, Source
from shipper.config import QueueConfig
from shipper.ledger import Ledger

__all__ = ["DropQueue", "Group"]

#: Maps a chunk's source to a batching group: ``take`` never mixes two groups.
Group = Callable[[Source], Hashable]


def _per_line(chunk: Chunk) -> int:
    return LINE_OVERHEAD + (OFFSET_OVERHEAD if chunk.offsets is not None else 0)


def _prefix_fitting(
    lines: list[bytes], max_lines: int, max_cost: int, overhead: int = 0
) -> tuple[int, int]:
    """Return (count, payload bytes) of the longest prefix of ``lines`` with at most
    ``max_lines`` lines costing at most ``max_cost`` (payload + ``overhead`` per line).

    Cumulative costs are built and searched by C code (accumulate, map, bisect): no
    Python-level step per line.
    """
    end = min(len(lines), max_lines)
    if end <= 0 or max_cost <= 0:
        return 0, 0
    cum = list(accumulate(map(len, lines[:end] if end < len(lines) else lines)))
    costs = (
        list(map(add, cum, range(overhead, overhead * (len(cum) + 1), overhead)))
        if overhead
        else cum
    )
    k = bisect_right(costs, max_cost)
    return k, (cum[k - 1] if k else 0)


class DropQueue:
    """Bounded by lines and by memory; drops newest or oldest on overflow."""

    def __init__(self, cfg: QueueConfig, ledger: Ledger) -> None:
        self._max_lines = cfg.max_lines
        self._max_cost = cfg.max_bytes
        self._drop_oldest = cfg.when_full == "drop_oldest"
        self._stall_timeout = cfg.stall_timeout
        self._ledger = ledger
        self._lock = threading.Lock()
        self._nonempty = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._chunks: deque[Chunk] = deque()
        self._lines = 0
        self._bytes = 0  # payload
        self._cost = 0  # payload plus per-line bookkeeping
        self._woken = False
        # Since when lines have been admitted with no delivery after them (None: none waits).
        self._undelivered_since: float | None = None

    @property
    def lines(self) -> int:
        """Lines waiting in the queue (not counting what the sender has taken)."""
        return self._lines

    @property
    def nbytes(self) -> int:
        """Payload bytes waiting in the queue."""
        return self._bytes

    # -- in ---------------------------------------------------------------------------
    def put(self, chunk: Chunk) -> None:
        """Admit ``chunk``; drop by policy (and count) whatever does not fit."""
        if chunk.lines:
            with self._lock:
                self._admit_dropping(chunk)

    def offer(self, chunk: Chunk) -> Chunk | None:
        """Admit the longest prefix of ``chunk`` that fits, dropping nothing; return the rest.

        Returns None when everything was admitted. While the queue is stalled it admits
        everything like ``put``, dropping the overflow by policy.
        """
        if not chunk.lines:
            return None
        with self._lock:
            if self._fits(chunk):
                self._append(chunk)
                return None
            if self._stalled(time.monotonic()):
                self._admit_dropping(chunk)
                return None
            k, kb = self._fitting(chunk)
            if not k:
                return chunk
            head, rest = chunk.split(k, kb)
            self._append(head)
            return rest

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` until a line fits or the queue stalls; True if so."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                now = time.monotonic()
                if self._has_room() or self._stalled(now):
                    return True
                left = deadline - now
                if left <= 0:
                    return False
                since = self._undelivered_since
                if since is not None:  # wake up when the stall begins, at the latest
                    left = min(left, max(since + self._stall_timeout - now, 0.0) + 0.001)
                self._room.wait(left)

    def _has_room(self) -> bool:
        return self._lines < self._max_lines and self._cost + LINE_OVERHEAD < self._max_cost

    def _fits(self, chunk: Chunk) -> bool:
        return (
            self._lines + len(chunk.lines) <= self._max_lines
            and self._cost + chunk.cost <= self._max_cost
        )

    def _fitting(self, chunk: Chunk) -> tuple[int, int]:
        """(count, payload bytes) of the longest prefix of ``chunk`` that fits now."""
        return _prefix_fitting(
            chunk.lines,
            self._max_lines - self._lines,
            self._max_cost - self._cost,
            _per_line(chunk),
        )

    def _stalled(self, now: float) -> bool:
        """Nothing was delivered for ``stall_timeout`` while lines waited (in the queue or
        taken by the sender)."""
        since = self._undelivered_since
        return since is not None and now - since > self._stall_timeout

    def _append(self, chunk: Chunk) -> None:
        if self._undelivered_since is None:
            self._undelivered_since = time.monotonic()
        self._chunks.append(chunk)
        n = len(chunk.lines)
        self._lines += n
        self._bytes += chunk.nbytes
        self._cost += chunk.cost
        self._ledger.admitted(n, chunk.nbytes)
        self._nonempty.notify()

    def _admit_dropping(self, chunk: Chunk) -> None:
        if self._fits(chunk):
            self._append(chunk)
        elif self._drop_oldest:
            self._admit_dropping_oldest(chunk)
        else:
            k, kb = self._fitting(chunk)
            if k:
                head, rest = chunk.split(k, kb)
                self._append(head)
                chunk = rest
            self._ledger.rejected("queue_full", len(chunk.lines), chunk.nbytes)

    def _admit_dropping_oldest(self, chunk: Chunk) -> None:
        per_line = _per_line(chunk)
        if len(chunk.lines) > self._max_lines or chunk.cost > self._max_cost:
            # The chunk alone is larger than the queue: keep its newest lines that fit.
            k, kb = _prefix_fitting(chunk.lines[::-1], self._max_lines, self._max_cost, per_line)
            old, chunk = chunk.split(len(chunk.lines) - k, chunk.nbytes - kb)
            self._ledger.rejected("queue_full", len(old.lines), old.nbytes)
        chunks = self._chunks
        while chunks:
            need_lines = self._lines + len(chunk.lines) - self._max_lines
            need_cost = self._cost + chunk.cost - self._max_cost
            if need_lines <= 0 and need_cost <= 0:
                break
            head = chunks[0]
            if need_lines >= len(head.lines) or need_cost >= head.cost:
                chunks.popleft()
                gone = head
            else:
                head_per_line = _per_line(head)
                cut = max(need_lines, 0)
                cut_bytes = sum(map(len, head.lines[:cut]))
                while cut_bytes + head_per_line * cut < need_cost:
                    cut_bytes += len(head.lines[cut])
                    cut += 1
                gone, chunks[0] = head.split(cut, cut_bytes)
            self._remove(gone)
            self._ledger.dropped("queue_full", len(gone.lines), gone.nbytes)
        if chunk.lines:
            self._append(chunk)

    def _remove(self, chunk: Chunk) -> None:
        self._lines -= len(chunk.lines)
        self._bytes -= chunk.nbytes
        self._cost -= chunk.cost

    # -- out --------------------------------------------------------------------------
    def take(
        self,
        max_lines: int,
        max_bytes: int,
        timeout: float,
        linger: float = 0.0,
        group: Group | None = None,
    ) -> list[Chunk]:
        """Take chunks up to ``max_lines`` and ``max_bytes`` of payload (at least one line if
        any waits), waiting up to ``timeout`` for the first and ``linger`` for a fuller take.

        With ``group``, stop before a chunk of another group. The lines stay counted as
        queued in the ledger until the caller settles them (sent or dropped). Returns ``[]``
        on timeout or ``wake``.
        """
        with self._lock:
            if not self._lines and not self._woken:
                self._nonempty.wait(timeout)
            if (
                self._lines
                and linger > 0
                and not self._woken
                and (self._lines < max_lines and self._bytes < max_bytes)
            ):
                deadline = time.monotonic() + linger
                while not self._woken and self._lines < max_lines and self._bytes < max_bytes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._nonempty.wait(left)
            self._woken = False
            if not self._lines:
                return []
            out = self._take_chunks(max_lines, max_bytes, group)
            self._room.notify_all()
            return out

    def delivered(self) -> None:
        """Note that Kafka just confirmed lines from the sender (the queue is not stalled)."""
        with self._lock:
            self._undelivered_since = time.monotonic() if self._lines else None

    def _take_chunks(self, max_lines: int, max_bytes: int, group: Group | None) -> list[Chunk]:
        chunks = self._chunks
        out: list[Chunk] = []
        n = nbytes = 0
        want = group(chunks[0].source) if group is not None else None
        while chunks and n < max_lines:
            head = chunks[0]
            if group is not None and out and group(head.source) != want:
                break
            if n + len(head.lines) <= max_lines and nbytes + head.nbytes <= max_bytes:
                chunks.popleft()
                piece = head
            else:
                k, kb = _prefix_fitting(head.lines, max_lines - n, max_bytes - nbytes)
                if not k and not out:
                    k, kb = 1, len(head.lines[0])  # always make progress
                if not k:
                    break
                piece, chunks[0] = head.split(k, kb)
            self._remove(piece)
            out.append(piece)
            n += len(piece.lines)
            nbytes += piece.nbytes
            if piece is not head:
                break
        return out

    def wake(self) -> None:
        """Make a waiting ``take`` return now (used at shutdown)."""
        with self._lock:
            self._woken = True
            self._nonempty.notify_all()

    def drop_all(self, reason: str) -> int:
        """Drop everything still queued for ``reason``; return the number of lines."""
        with self._lock:
            n, b = self._lines, self._bytes
            self._chunks.clear()
            self._lines = self._bytes = self._cost = 0
            if n:
                self._ledger.dropped(reason, n, b)
            self._room.notify_all()
            return n
