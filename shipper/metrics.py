"""Prometheus exposition of the ledger on /metrics, and /health as JSON, over plain HTTP.

The text format (Prometheus 0.0.4) and the small HTTP/1.0 server are written here: both are
a few lines, where prometheus_client and http.server (with http.client, email, html and ssl
behind them) cost a sidecar about 6 MiB of memory for what it never uses.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from shipper.ledger import LOST_REASONS, SKIP_REASONS, Histogram, Ledger, Snapshot
from shipper.log import log_lines_dropped

__all__ = ["MetricsServer", "render"]

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
_INF: Final = float("inf")


def _number(v: float) -> str:
    """A sample value as Prometheus (and Go) write it: 12.0, 1.5, 1e+09, +Inf, NaN."""
    d = float(v)
    if d != d:  # noqa: PLR0124 - NaN is the one value unequal to itself
        return "NaN"
    if d in (_INF, -_INF):
        return "+Inf" if d > 0 else "-Inf"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _label(name: str, value: str) -> str:
    escaped = value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return f'{{{name}="{escaped}"}}'


class _Text:
    """One exposition being written: families of samples, in order."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def family(self, name: str, kind: str, doc: str, samples: Iterable[tuple[str, float]]) -> None:
        """``name`` with its help and type, then its samples as (what follows the name: ""
        or labels such as ``{reason="x"}``, or a histogram's ``_bucket{le="1.0"}``, value)."""
        doc = doc.replace("\\", r"\\").replace("\n", r"\n")
        self.parts.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
        self.parts.extend(f"{name}{after} {_number(v)}\n" for after, v in samples)

    def counter(self, name: str, doc: str, value: float) -> None:
        self.family(f"{name}_total", "counter", doc, [("", value)])

    def counters(
        self, name: str, doc: str, label: str, values: Iterable[tuple[str, float]]
    ) -> None:
        samples = [(_label(label, k), v) for k, v in values]
        self.family(f"{name}_total", "counter", doc, samples)

    def gauge(self, name: str, doc: str, value: float) -> None:
        self.family(name, "gauge", doc, [("", value)])

    def gauges(self, name: str, doc: str, label: str, values: Iterable[tuple[str, float]]) -> None:
        self.family(name, "gauge", doc, [(_label(label, k), v) for k, v in values])

    def histogram(self, name: str, doc: str, h: Histogram) -> None:
        samples: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip((*h.bounds, _INF), h.buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound == _INF else repr(bound)
            samples.append((f"_bucket{_label('le', le)}", cumulative))
        samples += [("_count", cumulative), ("_sum", h.total)]
        self.family(name, "histogram", doc, samples)


def render(s: Snapshot) -> bytes:
    """The Prometheus text exposition of one consistent ledger snapshot."""
    t = _Text()
    t.counter("shipper_lines_read", "Lines read from files.", s.read_lines)
    t.counter("shipper_bytes_read", "Line payload bytes read from files.", s.read_bytes)
    t.counter("shipper_lines_sent", "Lines written to a Kafka connection.", s.sent_lines)
    t.counter("shipper_bytes_sent", "Line payload bytes written to Kafka.", s.sent_bytes)
    _confirmations(t, s)
    dropped = sorted(s.dropped_lines.items())
    t.counters("shipper_lines_dropped", "Lines dropped, by reason.", "reason", dropped)
    t.counters(
        "shipper_bytes_dropped",
        "Payload bytes dropped, by reason.",
        "reason",
        [(reason, s.dropped_bytes.get(reason, 0)) for reason, _ in dropped],
    )
    t.counters(
        "shipper_bytes_lost",
        "File bytes never read as lines, by reason.",
        "reason",
        [(r, s.bytes_lost.get(r, 0)) for r in sorted({*LOST_REASONS, *s.bytes_lost})],
    )
    t.counters(
        "shipper_bytes_skipped",
        "File bytes not read on purpose (already read from another file, or start_at end).",
        "reason",
        [(r, s.bytes_skipped.get(r, 0)) for r in sorted({*SKIP_REASONS, *s.bytes_skipped})],
    )
    t.counter(
        "shipper_log_lines_dropped",
        "Log lines that could not be written (closed stdout, full disk).",
        log_lines_dropped(),
    )
    t.counters(
        "shipper_events",
        "Tail and sender events, by name.",
        "event",
        [(name, n) for name, n in sorted(s.events.items()) if name not in _KAFKA_COUNTERS],
    )
    for name, doc in _KAFKA_COUNTERS.items():
        t.counter(f"shipper_{name}", doc, s.events.get(name, 0))
    t.gauge("shipper_queue_lines", "Lines queued or held by the sender.", s.queued_lines)
    t.gauge("shipper_queue_bytes", "Bytes queued or held by the sender.", s.queued_bytes)
    t.gauge("shipper_files_watched", "Files open for reading.", s.gauges.get("files_watched", 0))
    behind, held, other = [], [], []
    for name, v in sorted(s.gauges.items()):
        if name.startswith("bytes_behind:"):
            behind.append((name.split(":", 1)[1], v))
        elif name.startswith(_IN_FLIGHT_GAUGE):
            held.append((name.removeprefix(_IN_FLIGHT_GAUGE), v))
        elif name != "files_watched":
            other.append((name, v))
    t.gauges(
        "shipper_bytes_behind",
        "Bytes written to files but not read yet, per input.",
        "input",
        behind,
    )
    t.gauges(
        "shipper_kafka_in_flight_bytes",
        "Bytes written to a broker's connection and not confirmed yet, per broker.",
        "broker",
        held,
    )
    t.gauges("shipper_gauge", "Other gauges, by name.", "name", other)
    t.histogram(
        "shipper_kafka_fence_rtt_seconds",
        "Time from writing a fence to its answer (the broker took what came before it).",
        s.fence_rtt,
    )
    t.gauge(
        "shipper_ledger_balanced",
        "1 when read == confirmed + unconfirmed + in flight + dropped + queued.",
        1 if s.balanced else 0,
    )
    return "".join(t.parts).encode()


def _confirmations(t: _Text, s: Snapshot) -> None:
    t.counter(
        "shipper_lines_confirmed",
        "Lines written to Kafka and confirmed by an answered fence.",
        s.confirmed_lines,
    )
    t.counter(
        "shipper_bytes_confirmed",
        "Line payload bytes confirmed by an answered fence.",
        s.confirmed_bytes,
    )
    unconfirmed = sorted(s.unconfirmed_lines.items())
    t.counters(
        "shipper_lines_unconfirmed",
        "Lines written whose connection was lost before a fence confirmed them (they may "
        "or may not be in Kafka), by reason.",
        "reason",
        unconfirmed,
    )
    t.counters(
        "shipper_bytes_unconfirmed",
        "Payload bytes written and never confirmed, by reason.",
        "reason",
        [(reason, s.unconfirmed_bytes.get(reason, 0)) for reason, _ in unconfirmed],
    )
    t.gauge(
        "shipper_lines_in_flight",
        "Lines written to Kafka whose fence has not been answered yet.",
        s.in_flight_lines,
    )
    t.gauge(
        "shipper_bytes_in_flight",
        "Payload bytes written to Kafka whose fence has not been answered yet.",
        s.in_flight_bytes,
    )


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_MAX_LINE: Final = 8192  # bytes of the request line and of each header line
_MAX_HEADERS: Final = 100
_CLIENT_TIMEOUT: Final = 10.0  # seconds a client may take to send its request


class _Handler(socketserver.StreamRequestHandler):
    """One HTTP/1.0 exchange: read the request line and headers, answer, close."""

    timeout = _CLIENT_TIMEOUT
    server: _Server

    def handle(self) -> None:
        try:
            self._answer()
        except OSError:
            return  # the client went away or was too slow: nothing to answer to

    def _answer(self) -> None:
        parts = self.rfile.readline(_MAX_LINE + 1).split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            if parts:
                self._send(400, "text/plain", b"bad request\n", head=False)
            return
        for _ in range(_MAX_HEADERS):  # headers: nothing in them matters here
            if self.rfile.readline(_MAX_LINE + 1) in (b"\r\n", b"\n", b""):
                break
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            self._send(405, "text/plain", b"only GET and HEAD\n", head=False)
            return
        head = method == b"HEAD"
        path = target.split(b"?", 1)[0]
        if path == b"/metrics":
            self._send(200, CONTENT_TYPE, render(self.server.ledger.snapshot()), head=head)
        elif path in (b"/health", b"/healthz"):
            code, doc = self.server.health()
            self._send(code, "application/json", json.dumps(doc).encode(), head=head)
        else:
            self._send(404, "text/plain", b"not found: try /metrics or /health\n", head=head)

    def _send(self, code: int, ctype: str, body: bytes, *, head: bool) -> None:
        reason = _REASONS.get(code, "")
        header = (
            f"HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        self.wfile.write(header if head else header + body)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        ledger: Ledger,
        health: Callable[[], tuple[int, dict[str, Any]]],
    ) -> None:
        self.ledger = ledger
        self.health = health
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Not a traceback on stderr: a scrape that failed is the scraper's to notice."""
        return


class MetricsServer:
    """A small threaded HTTP server for /metrics and /health."""

    def __init__(
        self, listen: str, ledger: Ledger, health: Callable[[], tuple[int, dict[str, Any]]]
    ) -> None:
        host, _, port = listen.rpartition(":")
        self._server = _Server((host.strip("[]") or "0.0.0.0", int(port)), ledger, health)  # noqa: S104
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
