"""Prometheus exposition of the ledger on /metrics, and /health as JSON, over plain HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shipper.ledger import LOST_REASONS, SKIP_REASONS, Ledger
from shipper.log import log_lines_dropped

__all__ = ["MetricsServer"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
            "shipper_lines_sent", "Lines handed to a Kafka connection.", value=s.sent_lines
        )
        yield CounterMetricFamily(
            "shipper_bytes_sent", "Line payload bytes handed to Kafka.", value=s.sent_bytes
        )
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
        for reason in sorted({*LOST_REASONS, *s.bytes_lost}):
            lost.add_metric([reason], s.bytes_lost.get(reason, 0))
        yield lost
        skipped = CounterMetricFamily(
            "shipper_bytes_skipped",
            "File bytes not read on purpose (already read from another file, or start_at end).",
            labels=["reason"],
        )
        for reason in sorted({*SKIP_REASONS, *s.bytes_skipped}):
            skipped.add_metric([reason], s.bytes_skipped.get(reason, 0))
        yield skipped
        yield CounterMetricFamily(
            "shipper_log_lines_dropped",
            "Log lines that could not be written (closed stdout, full disk).",
            value=log_lines_dropped(),
        )
        ev = CounterMetricFamily(
            "shipper_events", "Tail and sender events, by name.", labels=["event"]
        )
        for name, n in sorted(s.events.items()):
            ev.add_metric([name], n)
        yield ev
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
        other = GaugeMetricFamily("shipper_gauge", "Other gauges, by name.", labels=["name"])
        for name, v in sorted(s.gauges.items()):
            if name.startswith("bytes_behind:"):
                behind.add_metric([name.split(":", 1)[1]], v)
            elif name != "files_watched":
                other.add_metric([name], v)
        yield behind
        yield other
        yield GaugeMetricFamily(
            "shipper_ledger_balanced",
            "1 when read == sent + dropped + queued.",
            value=1 if s.balanced else 0,
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
            target=self._server.serve_forever, name="shipper-metrics", daemon=True
        )

    @property
    def address(self) -> str:
        """The bound host:port (useful with port 0)."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def thread(self) -> threading.Thread:
        """The serving thread (for supervision)."""
        return self._thread

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
