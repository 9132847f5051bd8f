"""The counters every stage reports into, as transitions of lines from one state to the next.

A line is *read*, then *queued* (in the queue, or taken by the sender and not yet settled),
then either *sent* (handed to a Kafka connection) or *dropped* for a reason. Each method
moves lines between those states under the ledger's own lock, so
``read == sent + sum(dropped) + queued`` holds in every snapshot. The metrics endpoint and
the final log line read snapshots; nothing else reads the counters.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["DROP_REASONS", "LOST_REASONS", "SKIP_REASONS", "Ledger", "Snapshot"]

#: Every reason a line can be dropped, each documented in the README.
DROP_REASONS = (
    "queue_full",
    "kafka_unavailable",
    "line_too_long",
    "registry_unwritable",
    "shutdown",
    "sender_error",
    "reload",
)

#: Reasons for file bytes never read as lines (``lost_bytes``), each documented in the README.
LOST_REASONS = ("truncated_unread", "lost_on_crash", "deleted_unread", "registry_reset")
#: Reasons for file bytes not read because they are known to be read already, or not wanted
#: (``skipped_bytes``), each documented in the README.
SKIP_REASONS = ("copy", "copy_resumed", "start_at_end")


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
    events: dict[str, int] = field(default_factory=dict)
    bytes_lost: dict[str, int] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    bytes_skipped: dict[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        """Lines dropped for any reason."""
        return sum(self.dropped_lines.values())

    @property
    def balanced(self) -> bool:
        """True when read lines equal sent + dropped + queued lines."""
        return self.read_lines == self.sent_lines + self.dropped_total + self.queued_lines

    def as_log(self) -> dict[str, object]:
        """Flat fields for one structured log line."""
        return {
            "lines_read": self.read_lines,
            "lines_sent": self.sent_lines,
            "lines_dropped": self.dropped_total,
            "lines_queued": self.queued_lines,
            "dropped": {k: v for k, v in self.dropped_lines.items() if v},
            "bytes_read": self.read_bytes,
            "bytes_sent": self.sent_bytes,
            "bytes_lost": {k: v for k, v in self.bytes_lost.items() if v},
            "bytes_skipped": {k: v for k, v in self.bytes_skipped.items() if v},
            "balanced": self.balanced,
        }


class Ledger:
    """Line and byte counters moved by transitions, plus named events, byte losses and gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read = [0, 0]  # lines, bytes
        self._sent = [0, 0]
        self._queued = [0, 0]
        self._dropped_lines: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._dropped_bytes: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self._events: Counter[str] = Counter()
        self._lost: Counter[str] = Counter()
        self._skipped: Counter[str] = Counter()
        self._gauges: dict[str, float] = {}

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
        """Queued, then dropped for ``reason``."""
        with self._lock:
            self._queued[0] -= lines
            self._queued[1] -= nbytes
            self._drop(reason, lines, nbytes)

    def sent(self, lines: int, nbytes: int) -> None:
        """Queued, then handed to a Kafka connection."""
        with self._lock:
            self._queued[0] -= lines
            self._queued[1] -= nbytes
            self._sent[0] += lines
            self._sent[1] += nbytes

    def drop_queued(self, reason: str) -> int:
        """Drop every line still queued (in the queue or held by the sender) for ``reason``;
        return how many. The last step of a shutdown."""
        with self._lock:
            lines, nbytes = self._queued
            self._queued = [0, 0]
            self._drop(reason, lines, nbytes)
            return lines

    def _drop(self, reason: str, lines: int, nbytes: int) -> None:
        self._dropped_lines[reason] = self._dropped_lines.get(reason, 0) + lines
        self._dropped_bytes[reason] = self._dropped_bytes.get(reason, 0) + nbytes

    # -- events, byte losses and gauges ------------------------------------------------
    def event(self, name: str, n: int = 1) -> None:
        """Bump the counter of a named event (``files_opened``, ``lines_truncated``...)."""
        with self._lock:
            self._events[name] += n

    def lost_bytes(self, reason: str, nbytes: int) -> None:
        """Count bytes that were never read as lines (``LOST_REASONS``)."""
        with self._lock:
            self._lost[reason] += nbytes

    def skipped_bytes(self, reason: str, nbytes: int) -> None:
        """Count file bytes not read on purpose: known to be read already from another file
        (``copy``, ``copy_resumed``) or not wanted (``start_at_end``)."""
        with self._lock:
            self._skipped[reason] += nbytes

    def set_gauge(self, name: str, value: float) -> None:
        """Set a gauge (``files_watched``...)."""
        with self._lock:
            self._gauges[name] = value

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
                events=dict(self._events),
                bytes_lost=dict(self._lost),
                gauges=dict(self._gauges),
                bytes_skipped=dict(self._skipped),
            )
