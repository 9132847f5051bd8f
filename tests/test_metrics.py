"""/metrics in Prometheus text format (every documented metric, nothing undocumented) and
/health as JSON, served over real HTTP."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipper.ledger import DROP_REASONS, Ledger
from shipper.metrics import MetricsServer

README = Path(__file__).resolve().parent.parent / "README.md"


class Health:
    """The health callback, set by each test."""

    def __init__(self) -> None:
        self.answer: tuple[int, dict[str, Any]] = (200, {"status": "running"})

    def __call__(self) -> tuple[int, dict[str, Any]]:
        return self.answer


@pytest.fixture(name="ledger")
def fixture_ledger() -> Ledger:
    """A ledger with some of everything: lines read, sent, dropped, queued, events, gauges."""
    led = Ledger()
    led.admitted(10, 1000)
    led.sent(6, 600)
    led.dropped("queue_full", 1, 100)
    led.rejected("line_too_long", 2, 5000)
    led.event("files_opened", 3)
    led.lost_bytes("lost_on_crash", 77)
    led.set_gauge("files_watched", 2)
    led.set_gauge("bytes_behind:0", 4096)
    led.set_gauge("bytes_behind:1", 0)
    led.set_gauge("oldest_unread_age_seconds", 1.5)
    return led


@pytest.fixture(name="health")
def fixture_health() -> Health:
    """The answer /health gives."""
    return Health()


@pytest.fixture(name="server")
def fixture_server(ledger: Ledger, health: Health) -> Iterator[MetricsServer]:
    """A metrics server on a free port of 127.0.0.1, stopped after the test."""
    srv = MetricsServer("127.0.0.1:0", ledger, health)
    srv.start()
    yield srv
    srv.stop()


def get(server: MetricsServer, path: str) -> tuple[int, str, bytes]:
    """Status, content type and body of GET ``path``."""
    try:
        with urllib.request.urlopen(f"http://{server.address}{path}", timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def samples(server: MetricsServer) -> dict[str, float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser, as
    ``{'name{label="v"}': value}``."""
    code, ctype, body = get(server, "/metrics")
    assert code == 200
    assert ctype.startswith("text/plain; version=0.0.4")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def documented() -> set[str]:
    """Metric names in README's metrics table (with ``_total`` for counters)."""
    table = README.read_text().split("`GET /metrics`", 1)[1].split("\n\n", 2)[1]
    return set(re.findall(r"`(shipper_[a-z_]+)(?:\{[a-z]+\})?`", table))


def families(server: MetricsServer) -> set[str]:
    """The metric names /metrics declares (counters with their ``_total``), samples or not."""
    _code, _ctype, body = get(server, "/metrics")
    return {
        f.name + "_total" if f.type == "counter" else f.name
        for f in text_string_to_metric_families(body.decode())
    }


def test_every_documented_metric_is_served(server: MetricsServer) -> None:
    """Every metric README documents is on /metrics, and every metric served is documented."""
    names = families(server)
    docs = documented()
    assert len(docs) >= 14
    assert names == docs


def test_values_come_from_one_ledger_snapshot(server: MetricsServer) -> None:
    """Counters and gauges show the ledger's figures, labelled by reason, event and input."""
    m = samples(server)
    assert m["shipper_lines_read_total"] == 12
    assert m["shipper_bytes_read_total"] == 6000
    assert m["shipper_lines_sent_total"] == 6
    assert m["shipper_bytes_sent_total"] == 600
    assert m["shipper_queue_lines"] == 3
    assert m["shipper_queue_bytes"] == 300
    assert m['shipper_lines_dropped_total{reason="queue_full"}'] == 1
    assert m['shipper_bytes_dropped_total{reason="line_too_long"}'] == 5000
    for reason in DROP_REASONS:  # every reason is there from the start, at 0 if need be
        assert f'shipper_lines_dropped_total{{reason="{reason}"}}' in m
    assert m['shipper_bytes_lost_total{reason="lost_on_crash"}'] == 77
    assert m['shipper_bytes_lost_total{reason="truncated_unread"}'] == 0
    assert m['shipper_events_total{event="files_opened"}'] == 3
    assert m["shipper_files_watched"] == 2
    assert m['shipper_bytes_behind{input="0"}'] == 4096
    assert m['shipper_bytes_behind{input="1"}'] == 0
    assert m['shipper_gauge{name="oldest_unread_age_seconds"}'] == 1.5
    assert 'shipper_gauge{name="files_watched"}' not in m  # it has its own metric
    assert m["shipper_ledger_balanced"] == 1


def test_metrics_follow_the_ledger(server: MetricsServer, ledger: Ledger) -> None:
    """Each scrape reads the ledger anew."""
    assert samples(server)["shipper_lines_sent_total"] == 6
    ledger.sent(3, 300)
    m = samples(server)
    assert (m["shipper_lines_sent_total"], m["shipper_queue_lines"]) == (9, 0)


@pytest.mark.parametrize(
    ("code", "doc"),
    [
        (200, {"status": "running", "kafka_connected": True}),
        (200, {"status": "degraded", "registry_writable": False}),
        (503, {"status": "draining"}),
        (503, {"status": "starting"}),
    ],
)
def test_health(server: MetricsServer, health: Health, code: int, doc: dict[str, Any]) -> None:
    """/health (and /healthz) answer with the daemon's status code and JSON document."""
    health.answer = (code, doc)
    for path in ("/health", "/healthz", "/health?verbose=1"):
        got, ctype, body = get(server, path)
        assert (got, ctype, json.loads(body)) == (code, "application/json", doc)


def test_unknown_path_is_404(server: MetricsServer) -> None:
    """Any other path is a 404 that says where to look."""
    code, ctype, body = get(server, "/")
    assert (code, ctype) == (404, "text/plain")
    assert b"/metrics" in body


def test_address_and_stop(ledger: Ledger, health: Health) -> None:
    """Port 0 binds a free port, ``address`` names it, and ``stop`` closes it."""
    srv = MetricsServer("127.0.0.1:0", ledger, health)
    srv.start()
    host, port = srv.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    assert int(port) > 0
    assert get(srv, "/health")[0] == 200
    srv.stop()
    with pytest.raises(urllib.error.URLError):
        get(srv, "/health")
