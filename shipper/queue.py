"""The bounded in-memory queue between tailer and sender, and its drop policy.

``put`` never blocks: when a chunk does not fit, the ``when_full`` policy decides which lines
go, and they are counted as dropped (``queue_full``) under the same lock that decides it.
Chunks (lists of lines) travel through it, never single lines.

``room`` tells the tailer how much it may read without overflowing while the sender is
delivering (a file's backlog then waits in the file, not in memory). When nothing has been
handed to Kafka for ``stall_timeout`` while lines wait (Kafka down or stalled), ``room`` stops
limiting: reading keeps up with the files and the overflow is dropped and counted.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections import deque
from itertools import accumulate
from operator import add

from shipper.config import QueueConfig
from shipper.ledger import Ledger

__all__ = ["LINE_OVERHEAD", "DropQueue"]

#: Bytes of Python bookkeeping per queued line (bytes object header and list slot),
#: counted against ``queue.max_bytes`` so the bound is a bound on memory, not just payload.
LINE_OVERHEAD = 48


class _Chunk:
    """A list of lines from one source and the index of the first line not yet taken."""

    __slots__ = ("lines", "nbytes", "source", "start")

    def __init__(self, lines: list[bytes], nbytes: int, source: str) -> None:
        self.lines = lines
        self.start = 0
        self.nbytes = nbytes  # bytes of lines[start:]
        self.source = source


def _prefix_fitting(
    lines: list[bytes], start: int, max_lines: int, max_cost: int, overhead: int = 0
) -> tuple[int, int]:
    """Return (count, payload bytes) of the longest run of ``lines[start:]`` with at most
    ``max_lines`` lines costing at most ``max_cost`` (payload + ``overhead`` per line).

    Cumulative costs are built and searched by C code (accumulate, map, bisect): no
    Python-level step per line.
    """
    end = min(len(lines), start + max_lines)
    if end <= start:
        return 0, 0
    cum = list(accumulate(map(len, lines[start:end])))
    costs = (
        list(map(add, cum, range(overhead, overhead * (len(cum) + 1), overhead)))
        if overhead
        else cum
    )
    k = bisect_right(costs, max_cost)
    return k, (cum[k - 1] if k else 0)


class DropQueue:
    """Bounded by lines and bytes; drops newest or oldest on overflow; never blocks ``put``."""

    def __init__(self, cfg: QueueConfig, ledger: Ledger) -> None:
        self._max_lines = cfg.max_lines
        self._max_bytes = cfg.max_bytes
        self._drop_oldest = cfg.when_full == "drop_oldest"
        self._ledger = ledger
        self._lock = ledger.lock
        self._nonempty = threading.Condition(self._lock)
        self._chunks: deque[_Chunk] = deque()
        self._woken = False
        self._stall_timeout = cfg.stall_timeout
        self._quiet_since = time.monotonic()  # last put into an empty pipeline
        self.last_source = ""  # source of the lines the last take() returned (by_source)

    @property
    def lines(self) -> int:
        """Lines waiting in the queue (not counting what the sender holds)."""
        return self._ledger.queue_lines

    @property
    def nbytes(self) -> int:
        """Bytes waiting in the queue."""
        return self._ledger.queue_bytes

    def put(self, lines: list[bytes], nbytes: int, source: str = "") -> None:
        """Count ``lines`` as read and queue them; drop per policy what does not fit.

        ``source`` names where the lines come from (the file), for partitioning by file.
        """
        n = len(lines)
        if not n:
            return
        with self._lock:
            self._take_in(lines, nbytes, source)

    def _take_in(self, lines: list[bytes], nbytes: int, source: str) -> None:
        """Count ``lines`` as read and queue them, dropping by policy what does not fit."""
        led = self._ledger
        led.read_lines += len(lines)
        led.read_bytes += nbytes
        free_lines, free_cost = self._free()
        if len(lines) <= free_lines and nbytes + LINE_OVERHEAD * len(lines) <= free_cost:
            self._append(lines, nbytes, source)
        elif self._drop_oldest:
            self._put_dropping_oldest(lines, nbytes, source)
        else:
            self._put_dropping_newest(lines, nbytes, source)

    def _fitting(self, lines: list[bytes]) -> tuple[int, int]:
        """(count, payload bytes) of the longest prefix of ``lines`` that fits now."""
        free_lines, free_cost = self._free()
        if free_lines <= 0 or free_cost <= 0:
            return 0, 0
        return _prefix_fitting(lines, 0, free_lines, free_cost, LINE_OVERHEAD)

    def _free(self) -> tuple[int, int]:
        """Room left: (lines, bytes of payload plus per-line bookkeeping)."""
        led = self._ledger
        return (
            self._max_lines - led.queue_lines,
            self._max_bytes - led.queue_bytes - LINE_OVERHEAD * led.queue_lines,
        )

    def offer(self, lines: list[bytes], nbytes: int, source: str = "") -> int:
        """Queue the longest prefix of ``lines`` that fits, dropping nothing; return its length.

        While the queue stalls (nothing sent for ``stall_timeout`` with lines waiting) it
        takes everything like ``put``, dropping the overflow by policy.
        """
        n = len(lines)
        if not n:
            return 0
        led = self._ledger
        with self._lock:
            room_lines, room_cost = self._free()
            if n <= room_lines and nbytes + LINE_OVERHEAD * n <= room_cost:
                k, kb = n, nbytes
            elif self._stalled():
                self._take_in(lines, nbytes, source)
                return n
            else:
                k, kb = self._fitting(lines)
            if k:
                led.read_lines += k
                led.read_bytes += kb
                self._append(lines if k == n else lines[:k], kb, source)
            return k

    def _stalled(self) -> bool:
        """Nothing was handed to Kafka for ``stall_timeout`` while lines waited."""
        since = max(self._quiet_since, self._ledger.last_sent)
        return time.monotonic() - since > self._stall_timeout

    def room(self) -> int:
        """Bytes the tailer may read now; unlimited (a large number) while the queue stalls."""
        led = self._ledger
        free_lines, free_bytes = self._free()
        if free_lines > 0 and free_bytes > 0:
            # Estimate bytes per line from what was read so far, with a margin of two for
            # lines shorter than the average.
            per_line = (led.read_bytes // led.read_lines + 1) // 2 if led.read_lines else 16
            return min(free_bytes, free_lines * max(per_line, 1))
        if self._stalled():
            return 1 << 62  # stalled: keep reading, let the overflow drop
        return 0

    def _append(self, lines: list[bytes], nbytes: int, source: str) -> None:
        led = self._ledger
        if not led.queue_lines and not led.inflight_lines:
            self._quiet_since = time.monotonic()
        self._chunks.append(_Chunk(lines, nbytes, source))
        led.queue_lines += len(lines)
        led.queue_bytes += nbytes
        self._nonempty.notify()

    def _drop(self, lines: int, nbytes: int) -> None:
        self._ledger.count_dropped("queue_full", lines, nbytes)

    def _put_dropping_newest(self, lines: list[bytes], nbytes: int, source: str) -> None:
        k, kb = self._fitting(lines)
        if k:
            self._append(lines[:k], kb, source)
        self._drop(len(lines) - k, nbytes - kb)

    def _put_dropping_oldest(self, lines: list[bytes], nbytes: int, source: str) -> None:
        led = self._ledger
        ovh = LINE_OVERHEAD
        max_lines, max_cost = self._max_lines, self._max_bytes
        if len(lines) > max_lines or nbytes + ovh * len(lines) > max_cost:
            # The chunk alone is larger than the queue: keep its newest lines that fit.
            k, kb = _prefix_fitting(lines[::-1], 0, max_lines, max_cost, ovh)
            self._drop(len(lines) - k, nbytes - kb)
            lines, nbytes = lines[len(lines) - k :], kb
        n = len(lines)
        chunks = self._chunks
        while chunks:
            need_lines = led.queue_lines + n - max_lines
            need_cost = led.queue_bytes + nbytes + ovh * (led.queue_lines + n) - max_cost
            if need_lines <= 0 and need_cost <= 0:
                break
            head = chunks[0]
            remaining = len(head.lines) - head.start
            if need_lines >= remaining or need_cost >= head.nbytes + ovh * remaining:
                chunks.popleft()
                cut, cut_bytes = remaining, head.nbytes
            else:
                cut = max(need_lines, 0)
                cut_bytes = sum(map(len, head.lines[head.start : head.start + cut]))
                while cut_bytes + ovh * cut < need_cost:
                    cut_bytes += len(head.lines[head.start + cut])
                    cut += 1
                head.start += cut
                head.nbytes -= cut_bytes
            led.queue_lines -= cut
            led.queue_bytes -= cut_bytes
            self._drop(cut, cut_bytes)
        if lines:
            self._append(lines, nbytes, source)

    def take(
        self, max_lines: int, max_bytes: int, timeout: float, linger: float = 0.0,
        by_source: bool = False,
    ) -> tuple[list[bytes], int]:
        """Take up to the limits (at least one line if any), waiting up to ``timeout``.

        When fewer lines than a full batch are waiting, wait up to ``linger`` for more.
        With ``by_source``, stop where the source changes; ``last_source`` names it.
        The lines stay counted as queued until the caller settles them with
        ``Ledger.sent`` or ``Ledger.dropped``. Returns ``([], 0)`` on timeout or ``wake``.
        """
        led = self._ledger
        with self._lock:
            if not led.queue_lines and not self._woken:
                self._nonempty.wait(timeout)
            if led.queue_lines and linger > 0 and not self._woken and (
                led.queue_lines < max_lines and led.queue_bytes < max_bytes
            ):
                deadline = time.monotonic() + linger
                while (
                    not self._woken
                    and led.queue_lines < max_lines
                    and led.queue_bytes < max_bytes
                ):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._nonempty.wait(left)
            self._woken = False
            if not led.queue_lines:
                return [], 0
            out: list[bytes] = []
            out_bytes = 0
            chunks = self._chunks
            source = chunks[0].source if chunks else ""
            self.last_source = source
            while chunks and len(out) < max_lines:
                head = chunks[0]
                if by_source and head.source != source:
                    break
                remaining = len(head.lines) - head.start
                if len(out) + remaining <= max_lines and out_bytes + head.nbytes <= max_bytes:
                    out += head.lines[head.start :] if head.start else head.lines
                    out_bytes += head.nbytes
                    chunks.popleft()
                    continue
                k, kb = _prefix_fitting(
                    head.lines, head.start, max_lines - len(out), max_bytes - out_bytes
                )
                if not k and not out:
                    k, kb = 1, len(head.lines[head.start])  # always make progress
                if k:
                    out += head.lines[head.start : head.start + k]
                    out_bytes += kb
                    head.start += k
                    head.nbytes -= kb
                    if head.start == len(head.lines):
                        chunks.popleft()
                break
            n = len(out)
            led.queue_lines -= n
            led.queue_bytes -= out_bytes
            led.inflight_lines += n
            led.inflight_bytes += out_bytes
            return out, out_bytes

    def wake(self) -> None:
        """Make a waiting ``take`` return now (used at shutdown)."""
        with self._lock:
            self._woken = True
            self._nonempty.notify_all()

    def drop_all(self, reason: str) -> int:
        """Drop everything still queued for ``reason``; return the number of lines."""
        led = self._ledger
        with self._lock:
            n, b = led.queue_lines, led.queue_bytes
            self._chunks.clear()
            led.queue_lines = 0
            led.queue_bytes = 0
            led.count_dropped(reason, n, b)
            return n
