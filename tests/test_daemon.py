"""The daemon's lifecycle as systemd and operators see it: readiness, health, signals, the
drain and its final ledger line.

Most tests run ``shipper run`` as a process against a Kafka address nobody listens on, so
lines stay queued: what a stop does with them is then visible in the ledger.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shipper.config import parse
from shipper.daemon import Daemon
from tests.conftest import ROOT, Broker, free_port
from tests.support.readback import end_offsets
from tests.support.wait import wait_until


class Notify:
    """A fake systemd notification socket (unix datagram, abstract namespace)."""

    def __init__(self) -> None:
        self.address = f"@shipper-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def got(self, message: str) -> bool:
        """True once ``message`` has arrived (reads whatever is waiting)."""
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return message in self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(name="notify")
def fixture_notify() -> Iterator[Notify]:
    """A notification socket for the daemon to report to."""
    n = Notify()
    yield n
    n.close()


class Run:
    """A ``shipper run`` process: its stdout (JSON logs), stderr, /health and /metrics."""

    def __init__(self, tmp_path: Path, cfg: dict[str, Any], notify: Notify) -> None:
        self.cfg = cfg
        conf = tmp_path / "shipper.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        self.out = tmp_path / "stdout"
        self.err = tmp_path / "stderr"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shipper", "run", "-c", str(conf)],
                stdout=out,
                stderr=err,
                env={**os.environ, "NOTIFY_SOCKET": notify.address},
                cwd=ROOT,
            )
        started = wait_until(
            lambda: self.event("shipper_started") or self.proc.poll() is not None,
            30,
            "shipper_started",
            detail=self.output,
        )
        assert isinstance(started, dict), self.output()
        self.url = f"http://{started['metrics']}"

    def output(self) -> str:
        """What the process wrote so far, both streams."""
        return self.out.read_text(errors="replace")[-3000:] + self.err.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines so far."""
        return [json.loads(x) for x in self.out.read_text().splitlines() if x.startswith("{")]

    def event(self, name: str) -> dict[str, Any] | None:
        """The last log line with event ``name``, if any."""
        found = [e for e in self.events() if e.get("event") == name]
        return found[-1] if found else None

    def health(self) -> tuple[int, dict[str, Any]]:
        """Status code and JSON body of /health."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when absent)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return 0.0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code."""
        self.proc.send_signal(sig)
        return self.proc.wait(30)


MakeRun = Callable[..., Run]


@pytest.fixture(name="logs")
def fixture_logs(tmp_path: Path) -> Path:
    """The directory the daemon tails (``*.log``)."""
    d = tmp_path / "logs"
    d.mkdir()
    return d


def config(tmp_path: Path, logs: Path, bootstrap: str, **over: Any) -> dict[str, Any]:
    """A config with fast polling, its own registry, metrics on a free port chosen by the
    kernel, and ``over`` merged into its sections."""
    cfg: dict[str, Any] = {
        "inputs": [{"paths": [str(logs / "*.log")], "start_at": "beginning"}],
        "tail": {"poll_interval": "100ms", "rescan_interval": "200ms"},
        "kafka": {"bootstrap_servers": [bootstrap], "topic": f"t-{uuid.uuid4().hex[:12]}"},
        "registry": {"path": str(tmp_path / "state" / "registry.json")},
        "metrics": {"listen": "127.0.0.1:0"},
        "shutdown": {"drain_timeout": "1s"},
    }
    for section, values in over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


@pytest.fixture(name="run")
def fixture_run(tmp_path: Path, logs: Path, notify: Notify) -> Iterator[MakeRun]:
    """Starts ``shipper run`` (Kafka nobody listens on, unless ``bootstrap`` is given; config
    sections as keywords); kills what is still running after the test."""
    started: list[Run] = []

    def make(bootstrap: str | None = None, **over: Any) -> Run:
        cfg = config(tmp_path, logs, bootstrap or f"127.0.0.1:{free_port()}", **over)
        started.append(Run(tmp_path, cfg, notify))
        return started[-1]

    yield make
    for r in started:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait(10)


def append(path: Path, n: int, tag: bytes = b"line") -> None:
    """Append ``n`` numbered lines."""
    with path.open("ab") as f:
        f.write(b"".join(b"%s %d\n" % (tag, i) for i in range(n)))


def test_health_before_start_is_starting(tmp_path: Path, logs: Path) -> None:
    """Before ``run`` the daemon answers 503 ``starting``: probes wait until it runs."""
    cfg = parse(yaml.safe_dump(config(tmp_path, logs, "127.0.0.1:9")))
    code, doc = Daemon(cfg).health()
    assert (code, doc["status"], doc["kafka_connected"], doc["registry_writable"]) == (
        503,
        "starting",
        False,
        True,
    )


def test_ready_and_stopping_reach_systemd(run: MakeRun, notify: Notify) -> None:
    """READY=1 is sent once the daemon runs (health 200 ``running``), STOPPING=1 when a
    SIGTERM starts the stop; the exit is 0 and nothing is printed to stderr."""
    r = run()
    wait_until(lambda: notify.got("READY=1"), 10, "READY=1")
    code, doc = r.health()
    assert (code, doc["status"], doc["kafka_connected"], doc["registry_writable"]) == (
        200,
        "running",
        False,
        True,
    )
    assert r.stop(signal.SIGTERM) == 0
    assert notify.got("STOPPING=1")
    assert notify.messages.index("READY=1") < notify.messages.index("STOPPING=1")
    assert r.err.read_text() == ""


def test_sigterm_counts_what_it_could_not_send(run: MakeRun, logs: Path) -> None:
    """SIGTERM with lines Kafka never took: after ``drain_timeout`` they are dropped as
    ``shutdown``, and ``shutdown_complete`` carries the balanced final ledger."""
    r = run(kafka={"unavailable_timeout": "60s"})
    append(logs / "app.log", 50)
    wait_until(lambda: r.metric("shipper_lines_read_total") == 50, 30, "50 lines read")
    assert r.stop(signal.SIGTERM) == 0
    done = r.event("shutdown_complete")
    assert done is not None, r.output()
    assert done["balanced"] is True
    assert (done["lines_read"], done["lines_sent"], done["lines_queued"]) == (50, 0, 0)
    assert done["dropped"] == {"shutdown": 50}
    names = [e["event"] for e in r.events()]
    assert names.index("shutdown_started") < names.index("shutdown_complete")
    assert r.err.read_text() == ""


def test_draining_then_second_sigint_exits_130(run: MakeRun, logs: Path) -> None:
    """During a long drain /health answers 503 ``draining``; a second Ctrl-C exits at once
    with 130."""
    r = run(kafka={"unavailable_timeout": "60s"}, shutdown={"drain_timeout": "60s"})
    append(logs / "app.log", 10)
    wait_until(lambda: r.metric("shipper_lines_read_total") == 10, 30, "10 lines read")
    r.proc.send_signal(signal.SIGINT)
    wait_until(lambda: r.event("shutdown_started"), 10, "shutdown_started")
    code, doc = r.health()
    assert (code, doc["status"]) == (503, "draining")
    assert r.proc.poll() is None, "the first SIGINT drains"
    assert r.stop(signal.SIGINT) == 130
    assert r.event("shutdown_complete") is None


def test_degraded_while_the_registry_cannot_be_written(
    run: MakeRun, logs: Path, tmp_path: Path
) -> None:
    """While the registry cannot be written, lines are dropped ``registry_unwritable`` and
    /health says ``degraded`` (still 200); it recovers by itself."""
    r = run(kafka={"unavailable_timeout": "60s"})
    state = tmp_path / "state"
    # The running daemon holds its lock in the registry's directory (taken before it
    # started): move that directory away and put a file in its place.
    assert (state / "registry.json.lock").exists()
    state.rename(tmp_path / "state.moved")
    state.write_bytes(b"a file where the registry's directory should be")
    append(logs / "app.log", 20)
    reason = {"reason": "registry_unwritable"}
    wait_until(lambda: r.metric("shipper_lines_dropped_total", **reason) == 20, 30, "lines dropped")
    code, doc = r.health()
    assert (code, doc["status"], doc["registry_writable"]) == (200, "degraded", False)
    state.unlink()
    wait_until(lambda: r.health()[1]["status"] == "running", 30, "recovery")
    append(logs / "app.log", 5, b"after")
    wait_until(lambda: r.metric("shipper_lines_read_total") == 25, 30, "lines read again")
    assert r.metric("shipper_lines_dropped_total", **reason) == 20
    assert r.stop() == 0


@pytest.mark.kafka
def test_sigterm_drains_to_kafka_while_files_grow(run: MakeRun, logs: Path, kafka: Broker) -> None:
    """SIGTERM while a writer appends: the daemon stops reading, sends what it read, and
    exits 0 with a balanced ledger whose ``lines_sent`` is what the topic holds; nothing
    (such as watchdog's stop-race error) reaches stderr."""
    r = run(bootstrap=kafka.bootstrap, shutdown={"drain_timeout": "10s"})
    log = logs / "app.log"
    halt = threading.Event()
    written = [0]

    def write() -> None:
        with log.open("ab", buffering=0) as f:
            while not halt.is_set():
                f.write(b"".join(b"w %d\n" % (written[0] + i) for i in range(100)))
                written[0] += 100
                halt.wait(0.002)  # the writer's pace (about 50,000 lines/s), not a wait

    writer = threading.Thread(target=write)
    writer.start()
    try:
        wait_until(lambda: r.metric("shipper_lines_sent_total") >= 1000, 30, "lines flowing")
        assert r.stop(signal.SIGTERM) == 0
    finally:
        halt.set()
        writer.join()
    done = r.event("shutdown_complete")
    assert done is not None, r.output()
    assert done["balanced"] is True
    assert done["lines_read"] == done["lines_sent"] > 0
    assert done["dropped"] == {}
    topic = r.cfg["kafka"]["topic"]
    # acks=0: the topic holds every confirmed line, and at most every line written (a line
    # left unconfirmed, e.g. by a stall under load, may or may not have arrived).
    wait_until(
        lambda: sum(end_offsets(kafka.bootstrap, topic).values()) >= done["lines_confirmed"],
        30,
        "the topic to hold every confirmed line",
    )
    assert sum(end_offsets(kafka.bootstrap, topic).values()) <= done["lines_sent"]
    assert r.err.read_text() == ""
