"""Scrape and summarise the shipper's Prometheus /metrics endpoint."""

from __future__ import annotations

import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.error import URLError

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LedgerView", "healthy", "scrape"]


@dataclass(frozen=True)
class LedgerView:
    """The shipper's line accounting as seen on /metrics."""

    read: float
    sent: float
    queued: float
    dropped: dict[str, float] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """read == sent + dropped + queued."""
        return self.read == self.sent + sum(self.dropped.values()) + self.queued

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "dropped_total": sum(self.dropped.values()),
            "balanced": self.balanced,
        }


def _get(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return str(resp.read().decode())
    except (URLError, OSError, ValueError):
        return None


def scrape(url: str, timeout: float = 5.0) -> LedgerView | None:
    """Read the counters from url (None if it does not answer)."""
    text = _get(url, timeout)
    if text is None:
        return None
    values: dict[str, float] = {}
    dropped: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "shipper_lines_dropped_total":
                reason = s.labels.get("reason", "")
                dropped[reason] = dropped.get(reason, 0.0) + s.value
            elif not s.labels:
                values[s.name] = s.value
    return LedgerView(
        values.get("shipper_lines_read_total", 0.0),
        values.get("shipper_lines_sent_total", 0.0),
        values.get("shipper_queue_lines", 0.0),
        dropped,
    )


def healthy(url: str) -> bool:
    """True once /health answers 200 (url is the /metrics URL)."""
    return _get(url.rsplit("/", 1)[0] + "/health", 1.0) is not None
