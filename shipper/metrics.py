"""Prometheus exposition of the ledger on /metrics, and /health as JSON, over plain HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from shipper.ledger import Histogram, Ledger, Snapshot

__all__ = ["MetricsServer"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Events with a metric of their own (``shipper_<name>_total``), not in shipper_events_total.
_KAFKA_COUNTERS = {
    "kafka_fences": "Fences written (requests whose answer confirms the produces before them).",
    "kafka_stalls": "Connections declared stalled (a fence unanswered for stall_timeout).",
    "kafka_reconnects": "Connections made again to a broker that had one before.",
    "kafka_connect_failures": "Connection attempts that failed (the log says why).",
    "kafka_batches_rejected": "Batches the broker refused (closed the connection after them).",
}
_IN_FLIGHT_GAUGE = "kafka_in_flight_bytes:"


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    cumulative = 0
    buckets = []
    for bound, n in zip((*h.bounds, float("inf")), h.buckets, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.total)


class _LedgerCollector(Collector):
    """Builds every metric from one consistent ledger snapshot per scrape."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def collect(self) -> Iterator[Any]:
        s = self._ledger.snapshot()
        yield CounterMetricFamily(
            "shipper_lines_read", "Lines read from files.", value=s.read_lines
        )
        yield CounterMetricFamily(
            "shipper_bytes_read", "Line payload bytes read from files.", value=s.read_bytes
        )
        yield CounterMetricFamily(
            "shipper_lines_sent", "Lines written to a Kafka connection.", value=s.sent_lines
        )
        yield CounterMetricFamily(
            "shipper_bytes_sent", "Line payload bytes written to Kafka.", value=s.sent_bytes
        )
        yield from self._confirmations(s)
        dl = CounterMetricFamily(
            "shipper_lines_dropped", "Lines dropped, by reason.", labels=["reason"]
        )
        db = CounterMetricFamily(
            "shipper_bytes_dropped", "Payload bytes dropped, by reason.", labels=["reason"]
        )
        for reason, n in sorted(s.dropped_lines.items()):
            dl.add_metric([reason], n)
            db.add_metric([reason], s.dropped_bytes.get(reason, 0))
        yield dl
        yield db
        lost = CounterMetricFamily(
            "shipper_bytes_lost", "File bytes never read as lines, by reason.", labels=["reason"]
        )
        for reason in ("truncated_unread", "lost_on_crash"):
            lost.add_metric([reason], s.bytes_lost.get(reason, 0))
        yield lost
        ev = CounterMetricFamily(
            "shipper_events", "Tail and sender events, by name.", labels=["event"]
        )
        for name, n in sorted(s.events.items()):
            if name not in _KAFKA_COUNTERS:
                ev.add_metric([name], n)
        yield ev
        for name, doc in _KAFKA_COUNTERS.items():
            yield CounterMetricFamily(f"shipper_{name}", doc, value=s.events.get(name, 0))
        yield GaugeMetricFamily(
            "shipper_queue_lines", "Lines queued or held by the sender.", value=s.queued_lines
        )
        yield GaugeMetricFamily(
            "shipper_queue_bytes", "Bytes queued or held by the sender.", value=s.queued_bytes
        )
        yield GaugeMetricFamily(
            "shipper_files_watched",
            "Files open for reading.",
            value=s.gauges.get("files_watched", 0),
        )
        behind = GaugeMetricFamily(
            "shipper_bytes_behind",
            "Bytes written to files but not read yet, per input.",
            labels=["input"],
        )
        held = GaugeMetricFamily(
            "shipper_kafka_in_flight_bytes",
            "Bytes written to a broker's connection and not confirmed yet, per broker.",
            labels=["broker"],
        )
        other = GaugeMetricFamily("shipper_gauge", "Other gauges, by name.", labels=["name"])
        for name, v in sorted(s.gauges.items()):
            if name.startswith("bytes_behind:"):
                behind.add_metric([name.split(":", 1)[1]], v)
            elif name.startswith(_IN_FLIGHT_GAUGE):
                held.add_metric([name.removeprefix(_IN_FLIGHT_GAUGE)], v)
            elif name != "files_watched":
                other.add_metric([name], v)
        yield behind
        yield held
        yield other
        yield _histogram(
            "shipper_kafka_fence_rtt_seconds",
            "Time from writing a fence to its answer (the broker took what came before it).",
            s.fence_rtt,
        )
        yield GaugeMetricFamily(
            "shipper_ledger_balanced",
            "1 when read == confirmed + unconfirmed + in flight + dropped + queued.",
            value=1 if s.balanced else 0,
        )

    @staticmethod
    def _confirmations(s: Snapshot) -> Iterator[Any]:
        yield CounterMetricFamily(
            "shipper_lines_confirmed",
            "Lines written to Kafka and confirmed by an answered fence.",
            value=s.confirmed_lines,
        )
        yield CounterMetricFamily(
            "shipper_bytes_confirmed",
            "Line payload bytes confirmed by an answered fence.",
            value=s.confirmed_bytes,
        )
        ul = CounterMetricFamily(
            "shipper_lines_unconfirmed",
            "Lines written whose connection was lost before a fence confirmed them (they may "
            "or may not be in Kafka), by reason.",
            labels=["reason"],
        )
        ub = CounterMetricFamily(
            "shipper_bytes_unconfirmed",
            "Payload bytes written and never confirmed, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(s.unconfirmed_lines.items()):
            ul.add_metric([reason], n)
            ub.add_metric([reason], s.unconfirmed_bytes.get(reason, 0))
        yield ul
        yield ub
        yield GaugeMetricFamily(
            "shipper_lines_in_flight",
            "Lines written to Kafka whose fence has not been answered yet.",
            value=s.in_flight_lines,
        )
        yield GaugeMetricFamily(
            "shipper_bytes_in_flight",
            "Payload bytes written to Kafka whose fence has not been answered yet.",
            value=s.in_flight_bytes,
        )


class MetricsServer:
    """A small threaded HTTP server for /metrics and /health."""

    def __init__(
        self, listen: str, ledger: Ledger, health: Callable[[], tuple[int, dict[str, Any]]]
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_LedgerCollector(ledger))
        registry = self._registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE, generate_latest(registry))
                elif path in ("/health", "/healthz"):
                    code, doc = health()
                    self._send(code, "application/json", json.dumps(doc).encode())
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not worth a log line each

        self._server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Handler)  # noqa: S104
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            # shutdown() waits for the loop to notice: 50 ms, not the default half second
            # (it is on the path of every stop, whose deadline is drain_timeout + 1 s).
            kwargs={"poll_interval": 0.05},
            name="shipper-metrics",
            daemon=True,
        )

    @property
    def address(self) -> str:
        """The bound host:port (useful with port 0)."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
