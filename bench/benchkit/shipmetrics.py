"""Scrape and summarise the shipper's Prometheus /metrics endpoint."""

from __future__ import annotations

import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.error import URLError

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["LedgerView", "healthy", "scrape"]


_RTT = "shipper_kafka_fence_rtt_seconds"


@dataclass(frozen=True)
class LedgerView:
    """The shipper's line accounting as seen on /metrics, and its fence round trips."""

    read: float
    sent: float
    queued: float
    dropped: dict[str, float] = field(default_factory=dict)
    confirmed: float = 0.0
    in_flight: float = 0.0
    unconfirmed: dict[str, float] = field(default_factory=dict)
    fences: float = 0.0
    #: Cumulative fence round-trip buckets: (upper bound in seconds, count at or below it).
    fence_buckets: tuple[tuple[float, float], ...] = ()

    @property
    def balanced(self) -> bool:
        """read == confirmed + unconfirmed + in flight + dropped + queued."""
        settled = self.confirmed + sum(self.unconfirmed.values()) + self.in_flight
        return self.read == settled + sum(self.dropped.values()) + self.queued

    def fence_quantile_ms(self, q: float) -> float | None:
        """Upper bound (ms) of the histogram bucket holding quantile ``q`` of the fence round
        trips (None without fences; inf when past the last bound)."""
        if not self.fence_buckets or not self.fence_buckets[-1][1]:
            return None
        rank = q * self.fence_buckets[-1][1]
        for bound, count in self.fence_buckets:
            if count >= rank:
                return round(bound * 1000, 3)
        return float("inf")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["fence_buckets"]
        return {
            **out,
            "dropped_total": sum(self.dropped.values()),
            "unconfirmed_total": sum(self.unconfirmed.values()),
            "fence_rtt_p50_ms": self.fence_quantile_ms(0.5),
            "fence_rtt_p99_ms": self.fence_quantile_ms(0.99),
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
    by_reason: dict[str, dict[str, float]] = {
        "shipper_lines_dropped_total": {},
        "shipper_lines_unconfirmed_total": {},
    }
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in by_reason:
                reason = s.labels.get("reason", "")
                by_reason[s.name][reason] = by_reason[s.name].get(reason, 0.0) + s.value
            elif s.name == _RTT + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif not s.labels:
                values[s.name] = s.value
    return LedgerView(
        values.get("shipper_lines_read_total", 0.0),
        values.get("shipper_lines_sent_total", 0.0),
        values.get("shipper_queue_lines", 0.0),
        by_reason["shipper_lines_dropped_total"],
        confirmed=values.get("shipper_lines_confirmed_total", 0.0),
        in_flight=values.get("shipper_lines_in_flight", 0.0),
        unconfirmed=by_reason["shipper_lines_unconfirmed_total"],
        fences=values.get("shipper_kafka_fences_total", 0.0),
        fence_buckets=tuple(sorted(buckets)),
    )


def healthy(url: str) -> bool:
    """True once /health answers 200 (url is the /metrics URL)."""
    return _get(url.rsplit("/", 1)[0] + "/health", 1.0) is not None
