"""KafkaSender against a small in-process fake broker speaking the real Kafka wire protocol."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import ProduceRequest
from kafka.record.memory_records import MemoryRecords

from shipper.chunk import Chunk, Source
from shipper.config import KafkaConfig, QueueConfig
from shipper.kafka import sender as sender_mod
from shipper.kafka.encode import available_compressions
from shipper.kafka.records import Records
from shipper.kafka.sender import KafkaSender
from shipper.ledger import Ledger
from shipper.queue import DropQueue
from tests.support.readback import collect_stray_sockets
from tests.support.wait import wait_until

# --- a fake Kafka cluster --------------------------------------------------------------


class FakeCluster:
    """Nodes on 127.0.0.1 answering ApiVersions and Metadata, and recording Produce requests."""

    def __init__(self, nodes: int = 1) -> None:
        self.lock = threading.Lock()
        self.nodes = {i: FakeNode(self, i) for i in range(1, nodes + 1)}
        self.topics: dict[str, dict[int, int]] = {}  # topic -> partition -> leader
        self.topic_ids: dict[str, uuid.UUID] = {}
        self.auto_create_partitions = 1
        # (node id, topic, partition, acks, records bytes) per produced partition
        self.produced: list[tuple[int, str, int, int, bytes]] = []
        self.metadata_requests = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.nodes[1].port}"

    def set_topic(self, topic: str, leaders: dict[int, int]) -> None:
        with self.lock:
            self.topics[topic] = dict(leaders)
            self.topic_ids.setdefault(topic, uuid.uuid4())

    def values(self, topic: str | None = None) -> list[bytes]:
        """All record values received, in arrival order."""
        out = []
        with self.lock:
            produced = list(self.produced)
        for _node, t, _p, _acks, records in produced:
            if topic is not None and t != topic:
                continue
            mr = MemoryRecords(records)
            while (batch := mr.next_batch()) is not None:
                assert batch.validate_crc()
                out.extend(bytes(r.value) for r in batch)
        return out

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()

    # called on connection threads
    def handle(self, node: FakeNode, payload: bytes) -> bytes | None:
        key, version = struct.unpack_from(">hh", payload)
        if key == ApiVersionsRequest.API_KEY:
            req = ApiVersionsRequest.decode(payload, version=version, header=True)
            resp: Any = ApiVersionsResponse(
                version=version,
                error_code=0,
                api_keys=[
                    ApiVersionsResponse.ApiVersion(api_key=0, min_version=3, max_version=9),
                    ApiVersionsResponse.ApiVersion(api_key=3, min_version=0, max_version=12),
                    ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=3),
                ],
                throttle_time_ms=0,
            )
        elif key == MetadataRequest.API_KEY:
            req = MetadataRequest.decode(payload, version=version, header=True)
            resp = self._metadata(req, version)
        elif key == ProduceRequest.API_KEY:
            req = ProduceRequest.decode(payload, version=version, header=True)
            with self.lock:
                for t in req.topic_data:
                    for p in t.partition_data:
                        self.produced.append((node.node_id, t.name, p.index, req.acks, p.records))
            assert req.acks == 0
            return None
        else:
            raise AssertionError(f"unexpected api key {key}")
        resp.with_header(correlation_id=req.header.correlation_id)
        return bytes(resp.encode(header=True, framed=True))

    def _metadata(self, req: Any, version: int) -> Any:
        m = MetadataResponse
        with self.lock:
            self.metadata_requests += 1
            names = [t.name for t in req.topics or []]
            topics = []
            for name in names:
                if name not in self.topics and req.allow_auto_topic_creation:
                    self.topics[name] = dict.fromkeys(range(self.auto_create_partitions), 1)
                    self.topic_ids[name] = uuid.uuid4()
                if name not in self.topics:
                    topics.append(m.MetadataResponseTopic(error_code=3, name=name, partitions=[]))
                    continue
                parts = [
                    m.MetadataResponseTopic.MetadataResponsePartition(
                        error_code=0 if leader >= 0 else 5,
                        partition_index=p,
                        leader_id=leader,
                        leader_epoch=0,
                        replica_nodes=[max(leader, 1)],
                        isr_nodes=[max(leader, 1)],
                        offline_replicas=[],
                    )
                    for p, leader in sorted(self.topics[name].items())
                ]
                topics.append(
                    m.MetadataResponseTopic(
                        error_code=0,
                        name=name,
                        topic_id=self.topic_ids[name],
                        is_internal=False,
                        partitions=parts,
                    )
                )
            brokers = [
                m.MetadataResponseBroker(
                    node_id=n.node_id, host="127.0.0.1", port=n.port, rack=None
                )
                for n in self.nodes.values()
                if n.alive
            ]
        return m(
            version=version,
            throttle_time_ms=0,
            brokers=brokers,
            cluster_id="fake",
            controller_id=1,
            topics=topics,
        )


class FakeNode:
    """One listening socket; one thread per accepted connection."""

    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.alive = True
        self.reading = threading.Event()
        self.reading.set()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                self.reading.wait()
                head = _recv_exact(conn, 4)
                if head is None:
                    return
                payload = _recv_exact(conn, struct.unpack(">i", head)[0])
                if payload is None:
                    return
                out = self.cluster.handle(self, payload)
                if out is not None:
                    conn.sendall(out)

    def kill(self) -> None:
        """Stop listening and drop every connection (a crashed broker)."""
        self.alive = False
        self.reading.set()
        self.listener.close()
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


# --- helpers -----------------------------------------------------------------------------


class RecordingLog:
    """Duck-typed structlog logger that keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.events.append((level, event, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._add("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._add("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._add("exception", event, **kw)

    def names(self) -> list[str]:
        return [e for _, e, _ in list(self.events)]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    wait_until(cond, timeout, interval=0.005)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Rig:
    """A sender wired to a real Ledger and DropQueue."""

    def __init__(self, bootstrap: str, **kafka: Any) -> None:
        self.ledger = Ledger()
        self.queue = DropQueue(QueueConfig(max_lines=1_000_000, max_bytes=1 << 30), self.ledger)
        kafka.setdefault("topic", "logs")
        kafka.setdefault("linger", 0.001)
        self.cfg = KafkaConfig(bootstrap_servers=[bootstrap], **kafka)
        self.log = RecordingLog()
        self.sender = KafkaSender(self.cfg, self.queue, self.ledger, self.log)  # type: ignore[arg-type]
        self.stopped = False

    def put(self, lines: list[bytes], path: str = "/var/log/app.log") -> None:
        self.queue.put(Chunk(lines, sum(map(len, lines)), Source(path, 0), 0.0))

    def settled(self) -> bool:
        return self.ledger.snapshot().queued_lines == 0

    def stop(self, timeout: float = 5.0) -> float:
        t = time.monotonic()
        if not self.stopped:
            self.stopped = True
            self.sender.stop(t + timeout)
        return time.monotonic() - t


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    c = FakeCluster(nodes=2)
    yield c
    c.close()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for r in made:
        r.stop(2.0)
    collect_stray_sockets()


def lines_of(n: int, prefix: bytes = b"line") -> list[bytes]:
    return [prefix + b" %07d " % i + b"x" * (i % 300) for i in range(n)]


# --- tests -------------------------------------------------------------------------------


def test_delivers_every_line_once_in_order(cluster: FakeCluster, rigs: list[Rig]) -> None:
    rig = Rig(cluster.bootstrap)
    rigs.append(rig)
    t = time.monotonic()
    rig.sender.start()
    assert time.monotonic() - t < 1.0  # kafka-python's own constructor blocks ~30 s
    lines = [*lines_of(20_000), b"", b"\xff" * 20_000]
    for i in range(0, len(lines), 997):
        rig.put(lines[i : i + 997])
    wait_for(rig.settled)
    assert rig.sender.connected
    assert rig.stop() < 2.0
    assert cluster.values("logs") == lines
    snap = rig.ledger.snapshot()
    assert snap.sent_lines == len(lines)
    assert snap.sent_bytes == sum(map(len, lines))
    assert snap.balanced
    names = rig.log.names()
    assert "kafka_metadata" in names
    assert "kafka_connected" in names
    assert "sender_crashed" not in names


def test_round_robin_over_partitions_and_leaders(cluster: FakeCluster, rigs: list[Rig]) -> None:
    cluster.set_topic("rr", {0: 1, 1: 2, 2: 1})
    rig = Rig(cluster.bootstrap, topic="rr", batch_max_lines=50)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    lines = lines_of(3000)
    rig.put(lines)
    wait_for(rig.settled)
    rig.stop()
    assert sorted(cluster.values("rr")) == sorted(lines)
    with cluster.lock:
        by_partition = {p: n for n, _, p, _, _ in cluster.produced}
        per_partition = {
            p: sum(1 for _, t, q, _, _ in cluster.produced if t == "rr" and q == p)
            for p in (0, 1, 2)
        }
    assert by_partition == {0: 1, 1: 2, 2: 1}  # each partition went to its leader
    assert min(per_partition.values()) >= 15  # ~60 batches spread evenly


def test_start_never_blocks_and_unavailable_batches_are_dropped(rigs: list[Rig]) -> None:
    rig = Rig(f"127.0.0.1:{closed_port()}", unavailable_timeout=0.3)
    rigs.append(rig)
    t = time.monotonic()
    rig.sender.start()
    assert time.monotonic() - t < 1.0  # kafka-python's own constructor blocks ~30 s
    rig.put(lines_of(100))
    wait_for(rig.settled, timeout=5)
    assert not rig.sender.connected
    snap = rig.ledger.snapshot()
    assert snap.dropped_lines["kafka_unavailable"] == 100
    assert snap.sent_lines == 0
    assert snap.balanced
    wait_for(lambda: "kafka_unavailable" in rig.log.names(), timeout=5)
    assert "kafka_batch_dropped" in rig.log.names()
    assert rig.stop(1.0) < 1.5


def test_stop_with_broker_down_keeps_its_deadline(rigs: list[Rig]) -> None:
    rig = Rig(f"127.0.0.1:{closed_port()}", unavailable_timeout=30.0, batch_max_lines=10)
    rigs.append(rig)
    rig.sender.start()
    rig.put(lines_of(1000))
    wait_for(lambda: rig.queue.lines < 1000)  # the sender holds a batch
    took = rig.stop(0.5)
    assert took < 0.5 + 0.5
    snap = rig.ledger.snapshot()
    # What the sender held is settled as ``shutdown``; the rest stays queued for the daemon.
    assert snap.dropped_lines["shutdown"] >= 10
    assert snap.dropped_lines["kafka_unavailable"] == 0
    assert snap.queued_lines == rig.queue.lines
    assert snap.queued_lines + snap.dropped_lines["shutdown"] == 1000


def test_stop_drains_the_queue_first(cluster: FakeCluster, rigs: list[Rig]) -> None:
    rig = Rig(cluster.bootstrap, batch_max_lines=100)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    lines = lines_of(50_000)
    rig.put(lines)
    rig.stop(10.0)
    assert rig.queue.lines == 0
    assert rig.ledger.snapshot().sent_lines == len(lines)
    wait_for(lambda: len(cluster.values("logs")) == len(lines))
    assert cluster.values("logs") == lines
    assert "sender_stopped" in rig.log.names()


def test_line_too_long_is_dropped_not_stuck(cluster: FakeCluster, rigs: list[Rig]) -> None:
    rig = Rig(cluster.bootstrap, batch_max_bytes=4096)
    rigs.append(rig)
    rig.sender.start()
    big = b"B" * 5000
    lines = [b"before", big, b"after", *lines_of(200)]
    rig.put(lines)
    wait_for(rig.settled)
    rig.stop()
    snap = rig.ledger.snapshot()
    assert snap.dropped_lines["line_too_long"] == 1
    assert snap.dropped_bytes["line_too_long"] == 5000
    assert cluster.values("logs") == [x for x in lines if x is not big]
    assert "line_too_long" in rig.log.names()


def test_in_flight_bytes_are_bounded(cluster: FakeCluster, rigs: list[Rig]) -> None:
    node = cluster.nodes[1]
    rig = Rig(
        cluster.bootstrap,
        max_in_flight_bytes=64 * 1024,
        batch_max_bytes=16 * 1024,
        unavailable_timeout=0.5,
    )
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    node.reading.clear()  # the broker stops reading: kernel buffers fill, then ours
    lines = lines_of(200_000)
    peak = 0
    for i in range(0, len(lines), 10_000):
        rig.put(lines[i : i + 10_000])
    end = time.monotonic() + 2.5
    while time.monotonic() < end:
        peak = max(peak, rig.sender.buffered_bytes())
        time.sleep(0.002)
    snap = rig.ledger.snapshot()
    assert snap.dropped_lines["kafka_unavailable"] > 0  # waited for room, then gave up
    assert 16 * 1024 < peak <= 64 * 1024 + 16 * 1024, peak
    node.reading.set()
    wait_for(rig.settled, timeout=30)
    rig.stop()
    got = cluster.values("logs")
    assert len(got) == len(set(got)) == rig.ledger.snapshot().sent_lines
    assert rig.ledger.snapshot().balanced


def test_leader_failover_never_duplicates(cluster: FakeCluster, rigs: list[Rig]) -> None:
    cluster.set_topic("fo", {0: 2})
    rig = Rig(cluster.bootstrap, topic="fo", batch_max_lines=20, metadata_refresh=0.5)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    first = lines_of(2000, b"first")
    rig.put(first)
    wait_for(lambda: len(cluster.values("fo")) == len(first))
    cluster.set_topic("fo", {0: 1})
    cluster.nodes[2].kill()
    second = lines_of(2000, b"second")
    rig.put(second)
    wait_for(rig.settled, timeout=15)
    third = lines_of(2000, b"third")
    rig.put(third)
    wait_for(rig.settled, timeout=15)
    rig.stop()
    got = cluster.values("fo")
    assert len(got) == len(set(got))  # never twice
    snap = rig.ledger.snapshot()
    assert snap.balanced
    assert set(first) <= set(got)
    assert set(third) <= set(got)  # recovered on the new leader
    assert len(got) <= snap.sent_lines  # what the dead node had buffered is lost, not resent
    with cluster.lock:
        assert {n for n, t, *_ in cluster.produced if t == "fo"} == {1, 2}


def test_crash_is_logged_counted_and_survived(
    cluster: FakeCluster, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sender_mod.Records.batches
    calls = {"n": 0}

    def flaky(self: Records, chunks: list[Chunk], max_bytes: int, max_lines: int) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(self, chunks, max_bytes, max_lines)

    monkeypatch.setattr(sender_mod.Records, "batches", flaky)
    monkeypatch.setattr(sender_mod, "_CRASH_BACKOFF", 0.01)
    rig = Rig(cluster.bootstrap)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    rig.put([b"lost-1", b"lost-2"])
    wait_for(rig.settled)
    rig.put([b"kept"])
    wait_for(rig.settled)
    rig.stop()
    snap = rig.ledger.snapshot()
    assert snap.dropped_lines.get("sender_error") == 2
    assert snap.sent_lines == 1
    assert snap.balanced
    assert cluster.values("logs") == [b"kept"]
    assert "sender_crashed" in rig.log.names()


_CODECS = ["gzip", *(c for c in ("lz4", "zstd", "snappy") if c in available_compressions())]


@pytest.mark.parametrize("name", _CODECS)
def test_compressed_batches_arrive(cluster: FakeCluster, rigs: list[Rig], name: str) -> None:
    rig = Rig(cluster.bootstrap, compression=name)
    rigs.append(rig)
    rig.sender.start()
    lines = lines_of(5000)
    rig.put(lines)
    wait_for(rig.settled)
    rig.stop()
    assert cluster.values("logs") == lines


def test_idle_sender_is_cheap_and_stops_fast(cluster: FakeCluster, rigs: list[Rig]) -> None:
    rig = Rig(cluster.bootstrap)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    c0 = time.process_time()
    time.sleep(1.0)
    assert time.process_time() - c0 < 0.25  # idle: no busy loop on either thread (one is ~1.0)
    assert rig.stop(5.0) < 0.5
