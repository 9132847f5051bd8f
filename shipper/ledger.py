"""The counters every stage reports into, as transitions of lines from one state to the next.

A line is *read*, then *queued* (in the queue, or taken by the sender and not yet written),
then either *dropped* for a reason or *sent*: written to a Kafka connection, where it is
*in flight* until a fence on that connection is answered (*confirmed*: the broker took it)
or the connection is lost first (*unconfirmed* for a reason: it may or may not be in
Kafka). Each method moves lines between those states under the ledger's own lock, so

    read == confirmed + unconfirmed + in_flight + dropped + queued

holds in every snapshot (``sent`` is ``confirmed + unconfirmed + in_flight``, counted as
lines are written). The metrics endpoint and the final log line read snapshots; nothing
else reads the counters.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "DROP_REASONS",
    "FENCE_BUCKETS",
    "UNCONFIRMED_REASONS",
    "Histogram",
    "Ledger",
    "Snapshot",
]

#: Every reason a line can be dropped (never written to Kafka), each in the README.
DROP_REASONS = (
    "queue_full",
    "kafka_unavailable",
    "line_too_long",
    "registry_unwritable",
    "shutdown",
    "sender_error",
)
#: Every reason a written line can end unconfirmed (it may or may not be in Kafka).
UNCONFIRMED_REASONS = ("connection_closed", "stalled", "shutdown", "rejected")
#: Upper bounds (seconds) of the fence round-trip histogram's buckets.
FENCE_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations counted in ``buckets`` (non-cumulative; the last is +Inf), with their sum."""

    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    total: float

    @property
    def count(self) -> int:
        """Observations made."""
        return sum(self.buckets)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None without observations;
        +inf when it falls in the last, open bucket)."""
        n = self.count
        if not n:
            return None
        rank = q * n
        seen = 0
        for bound, k in zip((*self.bounds, float("inf")), self.buckets, strict=True):
            seen += k
            if seen >= rank:
                return bound
        return float("inf")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the ledger at one moment."""

    read_lines: int
    read_bytes: int
    sent_lines: int
    sent_bytes: int
    queued_lines: int
    queued_bytes: int
    dropped_lines: dict[str, int]
    dropped_bytes: dict[str, int]
    confirmed_lines: int = 0
    confirmed_bytes: int = 0
    in_flight_lines: int = 0
    in_flight_bytes: int = 0
    unconfirmed_lines: dict[str, int] = field(default_factory=dict)
    unconfirmed_bytes: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    bytes_lost: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    fence_rtt: Histogram = field(
        default_factory=lambda: Histogram(FENCE_BUCKETS, (0,) * (len(FENCE_BUCKETS) + 1), 0.0)
    )

    @property
    def dropped_total(self) -> int:
        """Lines dropped for any reason."""
        return sum(self.dropped_lines.values())

    @property
    def unconfirmed_total(self) -> int:
        """Lines written whose connection was lost before a fence confirmed them."""
        return sum(self.unconfirmed_lines.values())

    @property
    def balanced(self) -> bool:
        """True when read == confirmed + unconfirmed + in flight + dropped + queued lines."""
        return self.read_lines == (
            self.confirmed_lines
            + self.unconfirmed_total
            + self.in_flight_lines
            + self.dropped_total
            + self.queued_lines
        )

    def as_log(self) -> dict[str, object]:
        """Flat fields for one structured log line."""
        return {
            "lines_read": self.read_lines,
            "lines_sent": self.sent_lines,
            "lines_confirmed": self.confirmed_lines,
            "lines_unconfirmed": self.unconfirmed_total,
            "lines_in_flight": self.in_flight_lines,
            "lines_dropped": self.dropped_total,
            "lines_queued": self.queued_lines,
            "unconfirmed": {k: v for k, v in self.unconfirmed_lines.items() if v},
            "dropped": {k: v for k, v in self.dropped_lines.items() if v},
            "bytes_read": self.read_bytes,
            "bytes_sent": self.sent_bytes,
            "bytes_confirmed": self.confirmed_bytes,
            "bytes_lost": {k: v for k, v in self.bytes_lost.items() if v},
            "balanced": self.balanced,
        }


class Ledger:
    """Line and byte counters moved by transitions, plus named events, byte losses, gauges
    and the fence round-trip histogram."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read = [0, 0]  # lines, bytes
        self._sent = [0, 0]
        self._queued = [0, 0]
        self._in_flight = [0, 0]
        self._confirmed = [0, 0]
        self._dropped_lines: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._dropped_bytes: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._unconfirmed_lines: dict[str, int] = dict.fromkeys(UNCONFIRMED_REASONS, 0)
        self._unconfirmed_bytes: dict[str, int] = dict.fromkeys(UNCONFIRMED_REASONS, 0)
        self._events: Counter[str] = Counter()
        self._lost: Counter[str] = Counter()
        self._gauges: dict[str, float] = {}
        self._rtt = [0] * (len(FENCE_BUCKETS) + 1)
        self._rtt_sum = 0.0

    # -- transitions of lines ------------------------------------------------------------
    def admitted(self, lines: int, nbytes: int) -> None:
        """Read and queued."""
        with self._lock:
            self._read[0] += lines
            self._read[1] += nbytes
            self._queued[0] += lines
            self._queued[1] += nbytes

    def rejected(self, reason: str, lines: int, nbytes: int) -> None:
        """Read and dropped for ``reason`` without ever being queued."""
        with self._lock:
            self._read[0] += lines
            self._read[1] += nbytes
            self._drop(reason, lines, nbytes)

    def dropped(self, reason: str, lines: int, nbytes: int) -> None:
        """Queued, then dropped for ``reason`` (``lines`` may be 0 for bytes cut off lines
        that are still sent)."""
        with self._lock:
            self._queued[0] -= lines
            self._queued[1] -= nbytes
            self._drop(reason, lines, nbytes)

    def sent(self, lines: int, nbytes: int) -> None:
        """Queued, then written to a Kafka connection: in flight."""
        with self._lock:
            self._queued[0] -= lines
            self._queued[1] -= nbytes
            self._sent[0] += lines
            self._sent[1] += nbytes
            self._in_flight[0] += lines
            self._in_flight[1] += nbytes

    def confirmed(self, lines: int, nbytes: int) -> None:
        """In flight, then covered by an answered fence: the broker took them."""
        with self._lock:
            self._in_flight[0] -= lines
            self._in_flight[1] -= nbytes
            self._confirmed[0] += lines
            self._confirmed[1] += nbytes

    def unconfirmed(self, reason: str, lines: int, nbytes: int) -> None:
        """In flight, then their connection was lost for ``reason`` before a fence answered."""
        with self._lock:
            self._in_flight[0] -= lines
            self._in_flight[1] -= nbytes
            self._unconfirm(reason, lines, nbytes)

    def reclassify(self, was: str, reason: str, lines: int, nbytes: int) -> None:
        """Unconfirmed lines counted under ``was`` turn out to have ended for ``reason``."""
        with self._lock:
            self._unconfirmed_lines[was] -= lines
            self._unconfirmed_bytes[was] -= nbytes
            self._unconfirm(reason, lines, nbytes)

    def drop_queued(self, reason: str) -> int:
        """Drop every line still queued (in the queue or held by the sender) for ``reason``;
        return how many. A step of the end of a shutdown."""
        with self._lock:
            lines, nbytes = self._queued
            self._queued = [0, 0]
            self._drop(reason, lines, nbytes)
            return lines

    def unconfirm_in_flight(self, reason: str) -> int:
        """Count every line still in flight as unconfirmed for ``reason``; return how many.
        The last step of a shutdown."""
        with self._lock:
            lines, nbytes = self._in_flight
            self._in_flight = [0, 0]
            self._unconfirm(reason, lines, nbytes)
            return lines

    def _drop(self, reason: str, lines: int, nbytes: int) -> None:
        self._dropped_lines[reason] = self._dropped_lines.get(reason, 0) + lines
        self._dropped_bytes[reason] = self._dropped_bytes.get(reason, 0) + nbytes

    def _unconfirm(self, reason: str, lines: int, nbytes: int) -> None:
        self._unconfirmed_lines[reason] = self._unconfirmed_lines.get(reason, 0) + lines
        self._unconfirmed_bytes[reason] = self._unconfirmed_bytes.get(reason, 0) + nbytes

    # -- events, byte losses, gauges and the fence histogram -----------------------------
    def event(self, name: str, n: int = 1) -> None:
        """Bump the counter of a named event (``files_opened``, ``kafka_stalled``...)."""
        with self._lock:
            self._events[name] += n

    def lost_bytes(self, reason: str, nbytes: int) -> None:
        """Count bytes that were never read as lines (``truncated_unread``, ``lost_on_crash``)."""
        with self._lock:
            self._lost[reason] += nbytes

    def set_gauge(self, name: str, value: float) -> None:
        """Set a gauge (``files_watched``...)."""
        with self._lock:
            self._gauges[name] = value

    def clear_gauges(self, prefix: str) -> None:
        """Forget every gauge whose name starts with ``prefix`` (a broker that went away)."""
        with self._lock:
            for name in [n for n in self._gauges if n.startswith(prefix)]:
                del self._gauges[name]

    def fence_answered(self, seconds: float) -> None:
        """Record one fence round trip."""
        i = bisect_left(FENCE_BUCKETS, seconds)
        with self._lock:
            self._rtt[i] += 1
            self._rtt_sum += seconds

    def snapshot(self) -> Snapshot:
        """Return a consistent copy of every counter."""
        with self._lock:
            return Snapshot(
                read_lines=self._read[0],
                read_bytes=self._read[1],
                sent_lines=self._sent[0],
                sent_bytes=self._sent[1],
                queued_lines=self._queued[0],
                queued_bytes=self._queued[1],
                dropped_lines=dict(self._dropped_lines),
                dropped_bytes=dict(self._dropped_bytes),
                confirmed_lines=self._confirmed[0],
                confirmed_bytes=self._confirmed[1],
                in_flight_lines=self._in_flight[0],
                in_flight_bytes=self._in_flight[1],
                unconfirmed_lines=dict(self._unconfirmed_lines),
                unconfirmed_bytes=dict(self._unconfirmed_bytes),
                events=dict(self._events),
                bytes_lost=dict(self._lost),
                gauges=dict(self._gauges),
                fence_rtt=Histogram(FENCE_BUCKETS, tuple(self._rtt), self._rtt_sum),
            )
