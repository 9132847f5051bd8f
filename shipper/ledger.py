"""The counters every stage reports into; the metrics endpoint and the final log line read it.

The promise it keeps: ``read == sent + sum(dropped) + queued`` at every moment, because every
change that moves lines between those states happens under one lock (shared with the queue).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["DROP_REASONS", "Ledger", "Snapshot"]

#: Every reason a line can be dropped, each documented in the README.
DROP_REASONS = (
    "queue_full",
    "kafka_unavailable",
    "line_too_long",
    "registry_unwritable",
    "shutdown",
    "sender_error",
)


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

    @property
    def balanced(self) -> bool:
        """True when read lines equal sent + dropped + queued lines."""
        return self.read_lines == (
            self.sent_lines + sum(self.dropped_lines.values()) + self.queued_lines
        )

    def as_log(self) -> dict[str, object]:
        """Flat fields for one structured log line."""
        return {
            "lines_read": self.read_lines,
            "lines_sent": self.sent_lines,
            "lines_dropped": sum(self.dropped_lines.values()),
            "lines_queued": self.queued_lines,
            "dropped": {k: v for k, v in self.dropped_lines.items() if v},
            "bytes_read": self.read_bytes,
            "bytes_sent": self.sent_bytes,
            "bytes_lost": {k: v for k, v in self.bytes_lost.items() if v},
            "balanced": self.balanced,
        }


class Ledger:
    """Line and byte counters for every stage, plus named event counters and gauges.

    The queue holds ``lock`` while it moves lines, so queue contents are part of the same
    consistent state. Lines the sender has taken but not yet settled stay ``queued``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.read_lines = 0
        self.read_bytes = 0
        self.sent_lines = 0
        self.sent_bytes = 0
        self.last_sent = time.monotonic()  # when lines were last handed to Kafka
        # In the queue, and taken by the sender but not yet settled (sent or dropped).
        self.queue_lines = 0
        self.queue_bytes = 0
        self.inflight_lines = 0
        self.inflight_bytes = 0
        self.dropped_lines: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.dropped_bytes: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.events: Counter[str] = Counter()
        self.bytes_lost: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    # -- called by the sender for lines it took from the queue --------------------------
    def sent(self, lines: int, nbytes: int) -> None:
        """Settle ``lines`` taken from the queue as handed to a Kafka connection."""
        with self.lock:
            self.inflight_lines -= lines
            self.inflight_bytes -= nbytes
            self.sent_lines += lines
            self.sent_bytes += nbytes
            self.last_sent = time.monotonic()

    def dropped(self, reason: str, lines: int, nbytes: int) -> None:
        """Settle ``lines`` taken from the queue as dropped for ``reason``."""
        with self.lock:
            self.inflight_lines -= lines
            self.inflight_bytes -= nbytes
            self.count_dropped(reason, lines, nbytes)

    def count_dropped(self, reason: str, lines: int, nbytes: int) -> None:
        """Add to the drop counters of ``reason``; the caller holds ``lock``."""
        self.dropped_lines[reason] = self.dropped_lines.get(reason, 0) + lines
        self.dropped_bytes[reason] = self.dropped_bytes.get(reason, 0) + nbytes

    # -- called by the tailer for lines it read but will not queue ------------------------
    def read_and_dropped(self, reason: str, lines: int, nbytes: int) -> None:
        """Count lines that were read and dropped before reaching the queue."""
        with self.lock:
            self.read_lines += lines
            self.read_bytes += nbytes
            self.count_dropped(reason, lines, nbytes)

    # -- events, byte losses and gauges ------------------------------------------------
    def event(self, name: str, n: int = 1) -> None:
        """Bump the counter of a named event (``files_opened``, ``lines_truncated``...)."""
        with self.lock:
            self.events[name] += n

    def lost_bytes(self, reason: str, nbytes: int) -> None:
        """Count bytes that were never read as lines (``truncated_unread``, ``lost_on_crash``)."""
        with self.lock:
            self.bytes_lost[reason] += nbytes

    def set_gauge(self, name: str, value: float) -> None:
        """Set a gauge (``files_watched``...)."""
        with self.lock:
            self.gauges[name] = value

    def snapshot(self) -> Snapshot:
        """Return a consistent copy of every counter."""
        with self.lock:
            return Snapshot(
                read_lines=self.read_lines,
                read_bytes=self.read_bytes,
                sent_lines=self.sent_lines,
                sent_bytes=self.sent_bytes,
                queued_lines=self.queue_lines + self.inflight_lines,
                queued_bytes=self.queue_bytes + self.inflight_bytes,
                dropped_lines=dict(self.dropped_lines),
                dropped_bytes=dict(self.dropped_bytes),
                events=dict(self.events),
                bytes_lost=dict(self.bytes_lost),
                gauges=dict(self.gauges),
            )
