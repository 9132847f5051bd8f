"""The shipper against a real Kafka that fails: killed, frozen, behind a proxy that freezes,
swallows or resets connections, a topic with a small size limit, a cluster losing its
leader, and SIGTERM in the middle of each.

Every scenario writes about 20,000 lines/s, reads the topic back and checks: no line twice,
the ledger balanced (read = confirmed + unconfirmed + in flight + dropped + queued), and
``confirmed <= records in the topic <= confirmed + unconfirmed``.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from tests.integration.conftest import LocalKafka, Shipper, Start, base_config
from tests.support.faultproxy import FaultProxy, Mode
from tests.support.readback import collect_stray_sockets, read_topic
from tests.support.wait import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


RATE = 20_000  # lines per second each writer appends
STALL_TIMEOUT = 2.0  # kafka.stall_timeout (the default)
DRAIN_TIMEOUT = 5.0  # shutdown.drain_timeout (the default)
FREEZE = 10.0  # the SIGSTOP is 30 s; 10 s shows the same (stalled after 2 s)
_LINE = re.compile(rb"^(\S+) (\d{9}) ")
# --- brokers of our own ----------------------------------------------------------------------


@pytest.fixture(name="broker", scope="module")
def fixture_broker() -> Iterator[LocalKafka]:
    """One broker of our own, with a fault listener a proxy can sit in front of."""
    k = LocalKafka(fault=True)
    try:
        k.start()
        yield k
    finally:
        k.close()


@pytest.fixture(name="proxy")
def fixture_proxy(broker: LocalKafka) -> Iterator[FaultProxy]:
    """A FaultProxy on the port the fault listener advertises, forwarding to it."""
    host, _, port = broker.info["KAFKA_FAULT_TARGET"].rpartition(":")
    listen = broker.info["KAFKA_FAULT_BOOTSTRAP"].rpartition(":")[2]
    p = FaultProxy((host, int(port)), listen=("127.0.0.1", int(listen)))
    p.start()
    yield p
    p.close()


# --- writers and shippers ----------------------------------------------------------------


class Writer:
    """Appends ``RATE`` numbered lines a second to a file, on a thread, until stopped."""

    def __init__(self, path: Path, tag: str, every: float = 0.01, big: int = 0) -> None:
        self.path = path
        self.tag = tag.encode()
        self.every = every
        self.big = big  # also a line of this many bytes every half second (0: none)
        self.written = 0
        self.bigs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"writer-{tag}", daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop writing; return the number of lines written."""
        self._stop.set()
        self._thread.join(10)
        return self.written

    def _run(self) -> None:
        per_tick = max(1, int(RATE * self.every))
        filler = b"x" * 80
        t0 = time.monotonic()
        next_big = t0 + 0.5
        with self.path.open("ab") as f:
            while not self._stop.is_set():
                lines = [
                    b"%s %09d %s\n" % (self.tag, i, filler)
                    for i in range(self.written, self.written + per_tick)
                ]
                if self.big and time.monotonic() >= next_big:
                    next_big += 0.5
                    i = self.written + per_tick
                    lines.append(b"%s %09d %s\n" % (self.tag, i, b"B" * self.big))
                    per = per_tick + 1
                    self.bigs += 1
                else:
                    per = per_tick
                f.write(b"".join(lines))
                f.flush()
                self.written += per
                ahead = t0 + self.written / RATE - time.monotonic()
                if ahead > 0:
                    self._stop.wait(ahead)


@dataclass
class Run:
    """One shipper with its own topic and writer."""

    shipper: Shipper
    writer: Writer
    topic: str
    notes: dict[str, Any] = field(default_factory=dict)


def figures(s: Shipper) -> dict[str, Any]:
    """The ledger from /metrics: read, sent, confirmed, in_flight, queued, unconfirmed{},
    dropped{}, events{}."""
    m = s.metrics()

    def by(prefix: str, label: str) -> dict[str, int]:
        out = {}
        for k, v in m.items():
            if k.startswith(prefix + "{"):
                out[k.split(f'{label}="', 1)[1].split('"', 1)[0]] = int(v)
        return out

    return {
        "read": int(m.get("shipper_lines_read_total", 0)),
        "sent": int(m.get("shipper_lines_sent_total", 0)),
        "confirmed": int(m.get("shipper_lines_confirmed_total", 0)),
        "in_flight": int(m.get("shipper_lines_in_flight", 0)),
        "queued": int(m.get("shipper_queue_lines", 0)),
        "unconfirmed": by("shipper_lines_unconfirmed_total", "reason"),
        "dropped": by("shipper_lines_dropped_total", "reason"),
        "stalls": int(m.get("shipper_kafka_stalls_total", 0)),
        "rejected": int(m.get("shipper_kafka_batches_rejected_total", 0)),
        "balanced": m.get("shipper_ledger_balanced") == 1,
    }


def start_run(
    start_shipper: Start,
    tmp_path: Path,
    bootstrap: str,
    name: str,
    *,
    big: int = 0,
    topic: str | None = None,
    inputs: list[dict[str, Any]] | None = None,
) -> Run:
    """A writer at RATE lines/s and a shipper reading it into a fresh topic."""
    topic = topic or f"faults-{name}-{uuid.uuid4().hex[:8]}"
    work = tmp_path / name
    (work / "logs").mkdir(parents=True)
    log = work / "logs" / "app.log"
    log.touch()
    host = type("Broker", (), {"bootstrap": bootstrap})()
    cfg = base_config(host, topic, work, [str(log)])
    cfg["kafka"]["bootstrap_servers"] = bootstrap.split(",")
    cfg["log"]["stats_interval"] = "1s"
    if inputs:
        cfg["inputs"] = [*cfg["inputs"], *inputs]
    shipper = start_shipper(cfg, work)
    wait_until(lambda: shipper.health()[1].get("kafka") == "connected", 60, f"{name}: connected")
    return Run(shipper, Writer(log, name, big=big).start(), topic)


def wait_settled(run: Run, timeout: float = 90) -> dict[str, Any]:
    """Stop the writer; wait until every line written was read and reached a final state."""
    written = run.writer.stop()
    run.notes["written"] = written

    def done() -> dict[str, Any] | None:
        f = figures(run.shipper)
        return f if f["read"] >= written and f["queued"] == f["in_flight"] == 0 else None

    return wait_until(
        done, timeout, f"{run.topic}: settled", detail=lambda: run.shipper.logs()[-3000:]
    )


def stop(run: Run, within: float | None = None) -> dict[str, Any]:
    """SIGTERM; the shutdown_complete figures. With ``within``, it must exit that fast."""
    t0 = time.monotonic()
    rc = run.shipper.stop(signal.SIGTERM, timeout=60)
    took = time.monotonic() - t0
    run.notes["exit_s"] = round(took, 2)
    assert rc == 0, run.shipper.logs()[-3000:]
    if within is not None:
        assert took <= within, f"exited after {took:.2f} s (limit {within} s)"
    return run.shipper.final_ledger()


def check(
    run: Run,
    final: dict[str, Any],
    bootstrap: str,
    failover: bool = False,
    also: tuple[Writer, ...] = (),
) -> dict[str, Any]:
    """Read the lines of the run's writer (and of ``also``) back from its topic and hold the
    ledger against them; return the figures. ``failover``: a leader died, so confirmed lines
    may be missing (its unreplicated tail: acks=0 never waits for followers); how many is
    printed, not bounded (the followers' lag decides it)."""
    tags = {run.writer.tag, *(w.tag for w in also)}
    parts = read_topic(bootstrap, run.topic, timeout=60)
    collect_stray_sockets()
    ids = []
    for part in parts.values():
        for r in part:
            m = _LINE.match(r)
            assert m is not None, r[:80]
            if m.group(1) in tags:
                ids.append((m.group(1), int(m.group(2))))
    assert len(ids) == len(set(ids)), "a line arrived twice"
    confirmed = final["lines_confirmed"]
    unconfirmed = final["lines_unconfirmed"]
    accounted = (
        confirmed
        + unconfirmed
        + final["lines_in_flight"]
        + final["lines_dropped"]
        + final["lines_queued"]
    )
    assert final["balanced"], final
    assert final["lines_read"] == accounted, final
    assert final["lines_in_flight"] == final["lines_queued"] == 0, final
    missing = max(0, confirmed - len(ids))
    if not failover:
        assert missing == 0, (len(ids), final)  # confirmed <= records
    assert len(ids) <= confirmed + unconfirmed, (len(ids), final)
    out = {
        "records": len(ids),
        "read": final["lines_read"],
        "confirmed": confirmed,
        "unconfirmed": final["unconfirmed"],
        "dropped": final["dropped"],
        **run.notes,
    }
    if failover:
        out["confirmed_but_lost_in_failover"] = missing
    print(f"\n{run.topic} {run.writer.tag.decode()}: {out}")  # the figures, in the output
    return out


def shutdown_warnings_match(run: Run, final: dict[str, Any]) -> None:
    """The shutdown warnings give the ledger's own shutdown figures."""
    events = run.shipper.events()
    warned = {
        e["event"]: e["count"]
        for e in events
        if e.get("event") in {"lines_dropped", "lines_unconfirmed"}
        and e.get("reason") == "shutdown"
    }
    assert warned.get("lines_dropped", 0) == final["dropped"].get("shutdown", 0), (warned, final)
    assert warned.get("lines_unconfirmed", 0) == final["unconfirmed"].get("shutdown", 0), (
        warned,
        final,
    )


def event_times(run: Run, name: str) -> list[float]:
    """Wall-clock times of the log events called ``name``."""
    return [
        datetime.fromisoformat(e["timestamp"]).timestamp()
        for e in run.shipper.events()
        if e.get("event") == name
    ]


# --- scenarios ---------------------------------------------------------------------------


def test_broker_killed_and_restarted(
    broker: LocalKafka, tmp_path: Path, start_shipper: Start
) -> None:
    """kill -9 of the broker: what its connection held is unconfirmed, shipping resumes after
    the restart; a shipper stopped while the broker is down exits in time, balanced."""
    a = start_run(start_shipper, tmp_path, broker.bootstrap, "kill")
    b = start_run(start_shipper, tmp_path, broker.bootstrap, "kill-sigterm")
    time.sleep(2.0)  # the writers' lines flow
    broker.kill()
    time.sleep(3.0)  # into the outage
    final_b = stop(b, within=DRAIN_TIMEOUT + 1)
    shutdown_warnings_match(b, final_b)
    broker.start()
    time.sleep(3.0)  # shipping again
    wait_settled(a)
    got_a = check(a, stop(a), broker.bootstrap)
    assert (
        got_a["unconfirmed"].get("connection_closed", 0)
        + got_a["dropped"].get("kafka_unavailable", 0)
        + got_a["dropped"].get("queue_full", 0)
        > 0
    )  # the outage cost something, counted
    check(b, final_b, broker.bootstrap)


def test_broker_frozen(broker: LocalKafka, tmp_path: Path, start_shipper: Start) -> None:
    """SIGSTOP of the broker: kafka_stalled within stall_timeout + 1 s, /health says stalled
    (with how long), what it held is unconfirmed{stalled}; SIGCONT, and shipping resumes. A
    shipper stopped during the freeze exits in time, balanced."""
    a = start_run(start_shipper, tmp_path, broker.bootstrap, "freeze")
    b = start_run(start_shipper, tmp_path, broker.bootstrap, "freeze-sigterm")
    time.sleep(2.0)
    pid = broker.pid()
    frozen_at = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        health = wait_until(
            lambda: (h := a.shipper.health()[1]).get("kafka") == "stalled" and h,
            STALL_TIMEOUT + 3,
            "/health says stalled",
        )
        stalled = event_times(a, "kafka_stalled")
        assert stalled, a.shipper.logs()[-2000:]
        a.notes["stalled_after_s"] = round(stalled[0] - frozen_at, 2)
        assert stalled[0] - frozen_at <= STALL_TIMEOUT + 1, a.notes
        (node,) = health["kafka_brokers"].values()
        assert node["state"] == "stalled"
        assert node["stalled_for"] >= 0
        time.sleep(2.0)
        final_b = stop(b, within=DRAIN_TIMEOUT + 1)
        shutdown_warnings_match(b, final_b)
        time.sleep(max(0.0, frozen_at + FREEZE - time.time()))
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_settled(a)
    got = check(a, stop(a), broker.bootstrap)
    assert got["unconfirmed"].get("stalled", 0) > 0
    check(b, final_b, broker.bootstrap)


@pytest.mark.parametrize("mode", ["blackhole", "discard", "reset"])
def test_network_faults(
    broker: LocalKafka, proxy: FaultProxy, tmp_path: Path, start_shipper: Start, mode: str
) -> None:
    """Every connection through a proxy that freezes, swallows, or resets every 2 s: each
    loss is counted and bounded, shipping resumes; a shipper stopped meanwhile exits in time."""
    fault_bootstrap = broker.info["KAFKA_FAULT_BOOTSTRAP"]
    a = start_run(start_shipper, tmp_path, fault_bootstrap, mode)
    b = start_run(start_shipper, tmp_path, fault_bootstrap, f"{mode}-sigterm")
    time.sleep(2.0)
    began = time.time()
    if mode == "reset":
        proxy.reset_every(2.0)
    else:
        proxy.set_mode(Mode(mode))
    try:
        time.sleep(3.5)
        final_b = stop(b, within=DRAIN_TIMEOUT + 1)
        shutdown_warnings_match(b, final_b)
        time.sleep(max(0.0, began + 8.0 - time.time()))
        f = figures(a.shipper)
        if mode != "reset":
            assert f["stalls"] >= 1, f
            stalled = event_times(a, "kafka_stalled")
            a.notes["stalled_after_s"] = round(stalled[0] - began, 2)
            assert stalled[0] - began <= STALL_TIMEOUT + 1, a.notes
    finally:
        proxy.reset_every(None)
        proxy.set_mode(Mode.FORWARD)
    wait_settled(a)
    got = check(a, stop(a), broker.bootstrap)
    a.notes["proxy"] = str(proxy.stats())
    if mode == "reset":
        assert got["unconfirmed"].get("rejected", 0) == 0  # resets are not rejections
    check(b, final_b, broker.bootstrap)


def test_topic_size_limit(broker: LocalKafka, tmp_path: Path, start_shipper: Start) -> None:
    """A topic with max.message.bytes = 64 KiB and the default batch size: batches are sized
    to the topic, none is refused, no line is lost as sent; 200 KB lines follow long_lines
    (truncated in one input, dropped in the other)."""
    topic = f"faults-small-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"max.message.bytes": "65536"})])
    finally:
        admin.close()
        collect_stray_sockets()
    drops = tmp_path / "drops"
    drops.mkdir()
    drop_log = drops / "big.log"
    drop_log.touch()
    run = start_run(
        start_shipper,
        tmp_path,
        broker.bootstrap,
        "small",
        big=200_000,
        topic=topic,
        inputs=[{"paths": [str(drop_log)], "start_at": "beginning", "long_lines": "drop"}],
    )
    dropper = Writer(drop_log, "dropped", every=0.05, big=200_000).start()
    time.sleep(6.0)
    dropped_written = dropper.stop()
    wait_settled(run)
    wait_until(lambda: figures(run.shipper)["read"] >= run.notes["written"] + dropped_written, 30)
    final = stop(run)
    got = check(run, final, broker.bootstrap, also=(dropper,))
    assert final["lines_unconfirmed"] == 0, final  # nothing lost as "sent"
    assert got["records"] == final["lines_confirmed"] == final["lines_sent"]
    assert figures_events(run, "kafka_batches_rejected") == 0
    limits = [e for e in run.shipper.events() if e.get("event") == "kafka_limits"]
    assert limits[-1]["batch_max_bytes"] == 65536, limits
    parts = read_topic(broker.bootstrap, topic, timeout=60)
    collect_stray_sockets()
    longest = max(len(r) for p in parts.values() for r in p)
    assert longest == 65536 - 128  # the truncated 200 KB lines (LINE_ROOM below the limit)
    assert final["dropped"].get("line_too_long", 0) == dropper.bigs
    run.notes["big_lines"] = run.writer.bigs


def figures_events(run: Run, name: str) -> int:
    """How many times the shipper logged ``name`` (suppressed repeats included)."""
    return sum(1 + e.get("suppressed", 0) for e in run.shipper.events() if e.get("event") == name)


def test_cluster_loses_its_leader(tmp_path: Path, start_shipper: Start) -> None:
    """Three brokers, replication factor 3, the partition leader killed: shipping moves to
    the new leader, nothing arrives twice, what the dead leader held is counted; a shipper
    stopped while the leader is gone exits in time, balanced."""
    cluster = LocalKafka(nodes=3)
    try:
        cluster.start()
        topic = f"faults-rf3-{uuid.uuid4().hex[:8]}"
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        try:
            admin.create_topics([NewTopic(topic, 1, 3)])
            leader = wait_until(lambda: _leader(admin, topic), 30, "a leader")
        finally:
            admin.close()
            collect_stray_sockets()
        a = start_run(start_shipper, tmp_path, cluster.bootstrap, "rf3", topic=topic)
        b = start_run(start_shipper, tmp_path, cluster.bootstrap, "rf3-sigterm", topic=topic)
        time.sleep(2.0)
        before = figures(a.shipper)["confirmed"]
        killed_at = time.monotonic()
        cluster.kill(leader)
        time.sleep(2.0)
        final_b = stop(b, within=DRAIN_TIMEOUT + 1)
        shutdown_warnings_match(b, final_b)
        wait_until(
            lambda: figures(a.shipper)["confirmed"] > before + RATE // 2,
            60,
            "shipping on the new leader",
        )
        a.notes["moved_after_s"] = round(time.monotonic() - killed_at, 2)
        a.notes["killed_node"] = leader
        time.sleep(2.0)
        wait_settled(a)
        final_a = stop(a)
        alive = ",".join(cluster.info[f"KAFKA_NODE_{k}"] for k in (1, 2, 3) if k != leader)
        # What the dead leader had appended (and a fence confirmed) but no follower had copied
        # yet is gone with it: acks=0 cannot wait for replication. The figure is printed.
        check(a, final_a, alive, failover=True)
        check(b, final_b, alive, failover=True)
    finally:
        cluster.close()
        collect_stray_sockets()


def _leader(admin: KafkaAdminClient, topic: str) -> int | None:
    desc = admin.describe_topics([topic])
    for t in desc:
        for p in t.get("partitions", []):
            if p.get("leader_id", -1) >= 0:
                return int(p["leader_id"])
    return None
