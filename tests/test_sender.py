"""KafkaSender against a small in-process fake broker speaking the real Kafka wire protocol."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka.protocol.admin import DescribeConfigsRequest, DescribeConfigsResponse
from kafka.protocol.consumer import ListOffsetsRequest, ListOffsetsResponse
from kafka.protocol.metadata import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import ProduceRequest
from kafka.record.memory_records import MemoryRecords

from shipper.chunk import Chunk, Source
from shipper.config import KafkaConfig, QueueConfig, Route
from shipper.kafka import sender as sender_mod
from shipper.kafka.client import REJECT_STREAK
from shipper.kafka.encode import LINE_ROOM, available_compressions
from shipper.kafka.records import Records
from shipper.kafka.sender import KafkaSender
from shipper.ledger import Ledger, Snapshot
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
        self.max_message_bytes: dict[str, int] = {}  # topic -> max.message.bytes
        self.message_max_bytes = 1048588  # every broker's message.max.bytes
        self.describe_configs = True  # answer DescribeConfigs (else: not advertised)
        self.rejected: list[int] = []  # sizes of the batches refused (connection closed)
        self.not_ready: set[tuple[str, int]] = set()  # partitions their leader cannot take yet
        self.probes = 0  # ListOffsets requests answered

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
        """The framed answer to one request; None for none; raises _Close to hang up."""
        key, version = struct.unpack_from(">hh", payload)
        if key == ApiVersionsRequest.API_KEY:
            req = ApiVersionsRequest.decode(payload, version=version, header=True)
            av = ApiVersionsResponse.ApiVersion
            keys = [
                av(api_key=0, min_version=3, max_version=9),
                av(api_key=2, min_version=1, max_version=7),
                av(api_key=3, min_version=1, max_version=12),
                av(api_key=18, min_version=0, max_version=3),
            ]
            if self.describe_configs:
                keys.append(av(api_key=32, min_version=0, max_version=4))
            resp: Any = ApiVersionsResponse(
                version=version, error_code=0, api_keys=keys, throttle_time_ms=0
            )
        elif key == MetadataRequest.API_KEY:
            req = MetadataRequest.decode(payload, version=version, header=True)
            resp = self._metadata(req, version)
        elif key == ListOffsetsRequest.API_KEY:
            req = ListOffsetsRequest.decode(payload, version=version, header=True)
            resp = self._list_offsets(node, req, version)
        elif key == DescribeConfigsRequest.API_KEY:
            req = DescribeConfigsRequest.decode(payload, version=version, header=True)
            resp = self._describe(req, version)
        elif key == ProduceRequest.API_KEY:
            req = ProduceRequest.decode(payload, version=version, header=True)
            assert req.acks == 0
            with self.lock:
                for t in req.topic_data:
                    limit = self.max_message_bytes.get(t.name, self.message_max_bytes)
                    for p in t.partition_data:
                        if len(p.records) > limit:  # Kafka: RecordTooLarge; acks=0: hang up
                            self.rejected.append(len(p.records))
                            raise _Close
                        self.produced.append((node.node_id, t.name, p.index, req.acks, p.records))
            return None
        else:
            raise AssertionError(f"unexpected api key {key}")
        resp.with_header(correlation_id=req.header.correlation_id)
        return bytes(resp.encode(header=True, framed=True))

    def _list_offsets(self, node: FakeNode, req: Any, version: int) -> Any:
        """Ready (no error) only on the partition's leader, as a broker answers."""
        r = ListOffsetsResponse.ListOffsetsTopicResponse
        topics = []
        with self.lock:
            self.probes += 1
            for t in req.topics:
                leaders = self.topics.get(t.name)
                parts = []
                for p in t.partitions:
                    leader = None if leaders is None else leaders.get(p.partition_index)
                    error = 3 if leader is None else 0 if leader == node.node_id else 6
                    if (t.name, p.partition_index) in self.not_ready:
                        error = 6  # NOT_LEADER_OR_FOLLOWER: the log is not there yet
                    parts.append(
                        r.ListOffsetsPartitionResponse(
                            partition_index=p.partition_index,
                            error_code=error,
                            old_style_offsets=[],
                            timestamp=-1,
                            offset=0,
                            leader_epoch=0,
                        )
                    )
                topics.append(r(name=t.name, partitions=parts))
        return ListOffsetsResponse(version=version, throttle_time_ms=0, topics=topics)

    def _describe(self, req: Any, version: int) -> Any:
        r = DescribeConfigsResponse
        results = []
        with self.lock:
            for res in req.resources:
                if res.resource_type == 2:
                    name, value = (
                        "max.message.bytes",
                        self.max_message_bytes.get(res.resource_name, self.message_max_bytes),
                    )
                else:
                    name, value = "message.max.bytes", self.message_max_bytes
                entry = r.DescribeConfigsResult.DescribeConfigsResourceResult(
                    name=name,
                    value=str(value),
                    read_only=False,
                    config_source=5,
                    is_default=False,
                    is_sensitive=False,
                    synonyms=[],
                    config_type=3,
                    documentation=None,
                )
                results.append(
                    r.DescribeConfigsResult(
                        error_code=0,
                        error_message=None,
                        resource_type=res.resource_type,
                        resource_name=res.resource_name,
                        configs=[entry],
                    )
                )
        return r(version=version, throttle_time_ms=0, results=results)

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


class _Close(Exception):  # noqa: N818 - a signal between two methods, not an error
    """The fake broker hangs up on this connection (as Kafka does on a failed acks=0 produce)."""


class FakeNode:
    """One listening socket; one thread per accepted connection.

    ``reading`` cleared: requests stay unread (a frozen broker). ``swallow()``: requests
    are read and produce data kept, but nothing is answered (a peer that swallows);
    ``answer()`` ends that and hangs up on the connections whose answers were lost.
    """

    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.alive = True
        self.reading = threading.Event()
        self.reading.set()
        self.answering = threading.Event()
        self.answering.set()
        self.lossy: set[socket.socket] = set()  # connections whose answers were swallowed
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
                try:
                    out = self.cluster.handle(self, payload)
                except _Close:
                    conn.close()
                    return
                if out is None:
                    continue
                if self.answering.is_set():
                    conn.sendall(out)
                else:
                    self.lossy.add(conn)

    def swallow(self) -> None:
        """Read and keep everything, answer nothing."""
        self.answering.clear()

    def answer(self) -> None:
        """Answer again; a connection that lost answers is reset (it is out of step)."""
        self.answering.set()
        for c in list(self.lossy):
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self.lossy.clear()

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

    def __init__(self, bootstrap: str, routes: tuple[Route, ...] = (), **kafka: Any) -> None:
        self.ledger = Ledger()
        self.queue = DropQueue(QueueConfig(max_lines=1_000_000, max_bytes=1 << 30), self.ledger)
        kafka.setdefault("topic", "logs")
        kafka.setdefault("linger", 0.001)
        self.cfg = KafkaConfig(bootstrap_servers=[bootstrap], **kafka)
        self.log = RecordingLog()
        self.sender = KafkaSender(self.cfg, self.queue, self.ledger, self.log, routes)  # type: ignore[arg-type]
        self.stopped = False

    def put(self, lines: list[bytes], path: str = "/var/log/app.log", input: int = 0) -> None:
        self.queue.put(Chunk(lines, sum(map(len, lines)), Source(path, input), 0.0))

    def settled(self) -> bool:
        """Nothing queued, nothing in flight: every line reached its final state."""
        snap = self.ledger.snapshot()
        return snap.queued_lines == 0 and snap.in_flight_lines == 0

    def written(self) -> bool:
        """Nothing queued: every line was written or dropped."""
        return self.ledger.snapshot().queued_lines == 0

    def stop(self, timeout: float = 5.0) -> float:
        t = time.monotonic()
        if not self.stopped:
            self.stopped = True
            self.sender.stop(t + timeout)
        return time.monotonic() - t


@pytest.fixture(autouse=True)
def _quiet_kafka_python(caplog: pytest.LogCaptureFixture) -> None:
    """kafka-python's own logging off, as the daemon has it (log.configure): its captured
    records would keep the exceptions of failed connects, and with them unclosed sockets."""
    caplog.set_level(logging.CRITICAL, logger="kafka")


@pytest.fixture(name="cluster")
def fixture_cluster() -> Iterator[FakeCluster]:
    """Two fake brokers; topics are auto-created with one partition led by node 1."""
    c = FakeCluster(nodes=2)
    yield c
    c.close()


@pytest.fixture(name="rigs")
def fixture_rigs() -> Iterator[list[Rig]]:
    """Rigs a test makes, stopped after it."""
    made: list[Rig] = []
    yield made
    # No name may keep a rig: kafka-python leaves the sockets of failed connects to the GC,
    # reachable from exceptions its futures keep, and they must be collected here, quietly.
    while made:
        made.pop().stop(2.0)
    collect_stray_sockets()


def lines_of(n: int, prefix: bytes = b"line") -> list[bytes]:
    return [prefix + b" %07d " % i + b"x" * (i % 300) for i in range(n)]


def assert_bracketed(snap: Snapshot, records: list[bytes]) -> None:
    """The ledger and what the broker holds agree: no duplicate, every line accounted for,
    and confirmed <= records <= confirmed + unconfirmed."""
    assert len(records) == len(set(records)), "a line arrived twice"
    assert snap.balanced, snap
    assert snap.in_flight_lines == 0, snap
    assert snap.confirmed_lines <= len(records), (snap.confirmed_lines, len(records))
    assert len(records) <= snap.confirmed_lines + snap.unconfirmed_total, (snap, len(records))


# --- tests -------------------------------------------------------------------------------


def test_delivers_every_line_once_in_order(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """Every line arrives once, in order, and fences confirm all of them."""
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
    assert snap.sent_lines == snap.confirmed_lines == len(lines)
    assert snap.sent_bytes == snap.confirmed_bytes == sum(map(len, lines))
    assert snap.unconfirmed_total == 0
    assert snap.balanced
    assert snap.fence_rtt.count >= 1
    assert snap.events["kafka_fences"] >= 1
    names = rig.log.names()
    assert "kafka_metadata" in names
    assert "kafka_connected" in names
    assert "sender_crashed" not in names


def test_a_lone_line_is_confirmed_by_the_interval_fence(
    cluster: FakeCluster, rigs: list[Rig]
) -> None:
    """A trickle far below fence_bytes is still confirmed: a fence follows within
    fence_interval of the first unfenced write."""
    rig = Rig(cluster.bootstrap, fence_interval=0.05)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    for n in range(1, 4):
        rig.put([b"one line %d" % n])
        wait_for(lambda n=n: rig.ledger.snapshot().confirmed_lines == n, timeout=5)  # type: ignore[misc]
    snap = rig.ledger.snapshot()
    assert snap.events["kafka_fences"] >= 3
    assert snap.fence_rtt.count >= 3
    rig.stop()


def test_nothing_is_written_before_the_leader_can_append(
    cluster: FakeCluster, rigs: list[Rig]
) -> None:
    """A partition its leader cannot append to yet (a topic just created, a broker loading
    its logs) gets no produce, which it would refuse; once it can, every line arrives."""
    cluster.set_topic("fresh", {0: 1})
    cluster.not_ready.add(("fresh", 0))
    rig = Rig(cluster.bootstrap, topic="fresh", unavailable_timeout=30.0)
    rigs.append(rig)
    rig.sender.start()
    lines = lines_of(500)
    rig.put(lines)
    wait_for(lambda: cluster.probes >= 3)  # asked, refused, asked again...
    with cluster.lock:
        assert cluster.produced == []
        cluster.not_ready.clear()
    wait_for(rig.settled)
    rig.stop()
    assert cluster.values("fresh") == lines
    snap = rig.ledger.snapshot()
    assert snap.confirmed_lines == len(lines)
    assert snap.unconfirmed_total == 0


def test_round_robin_over_partitions_and_leaders(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """Batches go round-robin over partitions, each to its own leader."""
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
    assert rig.ledger.snapshot().confirmed_lines == len(lines)


# kafka-python's refused connects leave sockets for the garbage collector; one collected
# during this test is kafka-python's leftover, not a finding of the test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_start_never_blocks_and_unavailable_batches_are_dropped(rigs: list[Rig]) -> None:
    """Without a broker, start returns at once; batches wait unavailable_timeout, then are
    dropped as kafka_unavailable, and the log says the connection was refused."""
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
    failed = [kw for _, e, kw in rig.log.events if e == "kafka_connect_failed"]
    assert failed
    assert failed[0]["reason"] == "connection_refused"
    unavailable = [kw for _, e, kw in rig.log.events if e == "kafka_unavailable"]
    assert unavailable[0]["reason"].startswith("bootstrap failed: connection_refused")
    health = rig.sender.health()
    assert health["state"] == "unavailable"
    assert rig.stop(1.0) < 1.5


@pytest.mark.parametrize(
    ("server", "reason"),
    [
        ("dns", "unknown_host"),
        ("garbage", "not_kafka"),
        ("hang_up", "connection_closed"),
    ],
)
def test_bootstrap_failures_say_why(rigs: list[Rig], server: str, reason: str) -> None:
    """A bootstrap server that does not resolve, answers with something that is not Kafka,
    or hangs up in the handshake is reported with that reason, rate-limited."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                held.append(conn)
                conn.recv(4096)
                if server == "garbage":  # an HTTP server's answer, the connection kept open
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                else:
                    conn.close()

    threading.Thread(target=serve, daemon=True).start()
    address = "no-such-host.invalid:9092" if server == "dns" else f"127.0.0.1:{port}"
    try:
        rig = Rig(address, unavailable_timeout=0.3, connect_backoff_max=0.2)
        rigs.append(rig)
        rig.sender.start()
        wait_for(lambda: "kafka_connect_failed" in rig.log.names(), timeout=10)
        wait_for(lambda: "kafka_unavailable" in rig.log.names(), timeout=10)
        time.sleep(1.0)  # several attempts: the warning must not repeat for each
        failed = [kw for _, e, kw in rig.log.events if e == "kafka_connect_failed"]
        assert {kw["reason"] for kw in failed} == {reason}
        assert len(failed) <= 2  # one per 10 s, the suppressed ones counted
        assert rig.ledger.snapshot().events["kafka_connect_failures"] > len(failed)
        unavailable = [kw for _, e, kw in rig.log.events if e == "kafka_unavailable"]
        assert reason in unavailable[0]["reason"]
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_stop_with_broker_down_keeps_its_deadline(rigs: list[Rig]) -> None:
    """Stopping with no broker returns by the deadline; held lines count as shutdown."""
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
    """Stop sends everything queued and confirms it with a last fence before closing."""
    rig = Rig(cluster.bootstrap, batch_max_lines=100, fence_interval=10.0)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    lines = lines_of(50_000)
    rig.put(lines)
    rig.stop(10.0)
    assert rig.queue.lines == 0
    snap = rig.ledger.snapshot()
    assert snap.sent_lines == snap.confirmed_lines == len(lines)  # the final fence did it
    assert snap.in_flight_lines == 0
    wait_for(lambda: len(cluster.values("logs")) == len(lines))
    assert cluster.values("logs") == lines
    assert "sender_stopped" in rig.log.names()


def test_shutdown_with_a_silent_broker_counts_unconfirmed(
    cluster: FakeCluster, rigs: list[Rig]
) -> None:
    """Stopping while the broker takes bytes but answers nothing: the final fence goes
    unanswered, stop keeps its deadline, and what was written is unconfirmed{shutdown}."""
    rig = Rig(cluster.bootstrap, stall_timeout=30.0, unavailable_timeout=30.0)
    rigs.append(rig)
    rig.sender.start()
    rig.put([b"warm-up"])  # the partition's leader says it is ready, the line is confirmed
    wait_for(rig.settled)
    cluster.nodes[1].swallow()
    lines = lines_of(3000)
    rig.put(lines)
    wait_for(lambda: rig.ledger.snapshot().sent_lines == 1 + len(lines))
    assert rig.stop(0.5) < 0.5 + 1.0
    snap = rig.ledger.snapshot()
    assert snap.confirmed_lines == 1
    assert snap.unconfirmed_lines["shutdown"] == len(lines)
    assert_bracketed(snap, cluster.values("logs"))


def test_line_too_long_is_dropped_not_stuck(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """A line no batch of its topic can hold is dropped as line_too_long, with ``long_lines:
    drop`` (and whenever its record would not fit even cut, as the records module does)."""
    route = Route(topic="logs", format="raw", fields={}, long_lines="drop")
    cluster.max_message_bytes["logs"] = 4096
    rig = Rig(cluster.bootstrap, routes=(route,))
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
    assert snap.balanced


def test_line_too_long_is_truncated_to_fit(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """A topic whose max.message.bytes is below batch_max_bytes (the tailer cut lines for the
    larger limit): with ``long_lines: truncate`` a line too long for the topic ships cut to
    its limit less LINE_ROOM; the cut bytes count as line_too_long bytes, the line as one."""
    cluster.max_message_bytes["logs"] = 4096
    rig = Rig(cluster.bootstrap)  # batch_max_bytes stays 1000 KiB
    rigs.append(rig)
    rig.sender.start()
    big = b"B" * 5000
    rig.put([b"before", big, b"after"])
    wait_for(rig.settled)
    rig.stop()
    snap = rig.ledger.snapshot()
    assert cluster.values("logs") == [b"before", big[: 4096 - LINE_ROOM], b"after"]
    assert snap.dropped_lines["line_too_long"] == 0
    assert snap.dropped_bytes["line_too_long"] == 5000 - (4096 - LINE_ROOM)
    assert snap.confirmed_lines == 3
    assert snap.events.get("lines_truncated") == 1
    assert snap.balanced
    assert snap.read_bytes == snap.confirmed_bytes + snap.dropped_bytes["line_too_long"]


def test_batches_are_sized_to_the_topic_limit(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """The topic's max.message.bytes (and the brokers' message.max.bytes, if smaller) is
    read before the first batch: no batch is refused, lines over it follow long_lines."""
    cluster.max_message_bytes["small"] = 12_000
    cluster.message_max_bytes = 8192
    rig = Rig(cluster.bootstrap, topic="small")  # batch_max_bytes stays 1000 KiB
    rigs.append(rig)
    rig.sender.start()
    big = b"L" * 20_000
    lines = [*lines_of(20_000), big]
    rig.put(lines)
    wait_for(rig.settled, timeout=20)
    rig.stop()
    assert cluster.rejected == []
    with cluster.lock:
        sizes = [len(r) for *_, r in cluster.produced]
    assert max(sizes) <= 8192
    got = cluster.values("small")
    assert got == [*lines[:-1], big[: 8192 - LINE_ROOM]]
    snap = rig.ledger.snapshot()
    assert snap.confirmed_lines == len(lines)
    assert "kafka_limits" in rig.log.names()
    limits = [kw for _, e, kw in rig.log.events if e == "kafka_limits"][-1]
    assert (limits["max_message_bytes"], limits["message_max_bytes"]) == (12_000, 8192)
    assert limits["batch_max_bytes"] == 8192


def test_rejected_batches_are_counted_and_halved(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """A broker that closes the connection after each produce (its limit unknown to us):
    after REJECT_STREAK closes in a row the lines count as rejected, kafka_batches_rejected
    is logged with the sizes, and batches halve until they pass."""
    cluster.describe_configs = False  # the sender cannot read the limit
    cluster.max_message_bytes["logs"] = 40_000
    rig = Rig(cluster.bootstrap, batch_max_bytes=150_000, connect_backoff_max=0.05)
    rigs.append(rig)
    rig.sender.start()
    lines = lines_of(30_000)
    for i in range(0, len(lines), 1000):
        rig.put(lines[i : i + 1000])
    wait_for(rig.settled, timeout=30)
    rig.stop()
    snap = rig.ledger.snapshot()
    assert snap.unconfirmed_lines["rejected"] > 0
    assert snap.events["kafka_batches_rejected"] >= REJECT_STREAK
    assert "kafka_limits_unknown" in rig.log.names()
    rejected = [kw for _, e, kw in rig.log.events if e == "kafka_batches_rejected"]
    assert rejected[0]["batch_max_bytes"] == 75_000
    assert all(size > 40_000 for size in rejected[0]["batch_bytes"])
    caps = [kw["batch_max_bytes"] for _, e, kw in rig.log.events if e == "kafka_limits"]
    assert caps == [150_000, 75_000, 37_500]  # halved twice (one warning: rate-limited)
    got = cluster.values("logs")
    assert set(lines[-1000:]) <= set(got)  # batches pass once small enough
    assert_bracketed(snap, got)


def test_in_flight_bytes_are_bounded(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """A frozen broker: at most max_in_flight_bytes go unconfirmed on its connection; the
    fence goes unanswered for stall_timeout, the connection is declared stalled, its lines
    count as unconfirmed{stalled}, and /health says so."""
    node = cluster.nodes[1]
    rig = Rig(
        cluster.bootstrap,
        max_in_flight_bytes=64 * 1024,
        batch_max_bytes=16 * 1024,
        unavailable_timeout=0.5,
        stall_timeout=0.5,
    )
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    node.reading.clear()  # the broker stops reading: nothing is answered any more
    lines = lines_of(200_000)
    peak = 0
    for i in range(0, len(lines), 10_000):
        rig.put(lines[i : i + 10_000])
    end = time.monotonic() + 2.5
    stalled_health: dict[str, Any] = {}
    while time.monotonic() < end:
        peak = max(peak, rig.sender.in_flight_bytes())
        health = rig.sender.health()
        if health["state"] == "stalled":
            stalled_health = health
        time.sleep(0.002)  # the sampling interval of the peak
    snap = rig.ledger.snapshot()
    assert snap.dropped_lines["kafka_unavailable"] > 0  # waited for room, then gave up
    assert 16 * 1024 < peak <= 64 * 1024, peak
    assert snap.unconfirmed_lines["stalled"] > 0
    assert snap.events["kafka_stalls"] >= 1
    stalled = [kw for _, e, kw in rig.log.events if e == "kafka_stalled"]
    assert stalled[0]["unanswered_for"] >= 0.5
    assert stalled_health["brokers"]["1"]["state"] == "stalled"
    assert stalled_health["brokers"]["1"]["stalled_for"] >= 0
    node.reading.set()
    wait_for(rig.settled, timeout=30)
    rig.stop()
    assert_bracketed(rig.ledger.snapshot(), cluster.values("logs"))


def test_a_peer_that_swallows_bytes_is_stalled(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """A broker that reads everything and answers nothing (the bytes may or may not be
    kept): stalled after stall_timeout, never more than max_in_flight_bytes exposed, and
    the ledger brackets what arrived."""
    node = cluster.nodes[1]
    rig = Rig(
        cluster.bootstrap,
        max_in_flight_bytes=64 * 1024,
        batch_max_bytes=16 * 1024,
        unavailable_timeout=0.5,
        stall_timeout=0.3,
        connect_backoff_max=0.1,
    )
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    rig.put(lines_of(1000, b"before"))
    wait_for(rig.settled)
    node.swallow()
    rig.put(lines_of(20_000, b"during"))
    wait_for(lambda: "kafka_stalled" in rig.log.names(), timeout=5)
    node.answer()
    wait_for(rig.settled, timeout=30)
    after = lines_of(1000, b"after")
    rig.put(after)
    wait_for(lambda: rig.ledger.snapshot().confirmed_lines >= 2000, timeout=30)
    rig.stop()
    snap = rig.ledger.snapshot()
    assert snap.unconfirmed_lines["stalled"] > 0
    # Each stall exposes at most max_in_flight_bytes (payload is less than the wire bytes).
    assert snap.unconfirmed_bytes["stalled"] <= 64 * 1024 * snap.events["kafka_stalls"]
    got = cluster.values("logs")
    assert set(after) <= set(got)
    assert_bracketed(snap, got)


# kafka-python 3.0.12 leaves the socket of a connect it abandons (the dead leader) to the
# garbage collector; when the collector runs inside this test, that is its ResourceWarning.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_leader_failover_never_duplicates(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """A leader dies: what it held is unconfirmed, shipping moves to the new leader, no line
    is written twice, and one lost connection is not mistaken for a rejection."""
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
    snap = rig.ledger.snapshot()
    assert set(first) <= set(got)
    assert set(third) <= set(got)  # recovered on the new leader
    assert_bracketed(snap, got)
    assert snap.unconfirmed_lines["rejected"] == 0
    with cluster.lock:
        assert {n for n, t, *_ in cluster.produced if t == "fo"} == {1, 2}


def test_a_topic_per_input(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """Each input's lines go to its route's topic over the one connection per broker, and a
    take never mixes two topics in a batch."""
    routes = (
        Route(topic="alpha", format="raw", fields={}),
        Route(topic="beta", format="raw", fields={}),
        Route(topic="logs", format="raw", fields={}),
    )
    rig = Rig(cluster.bootstrap, routes=routes)
    rigs.append(rig)
    rig.sender.start()
    sent: dict[str, list[bytes]] = {"alpha": [], "beta": [], "logs": []}
    for round_ in range(30):
        for i, route in enumerate(routes):
            batch = lines_of(100, f"{route.topic}-{round_}".encode())
            sent[route.topic].extend(batch)
            rig.put(batch, path=f"/var/log/{route.topic}.log", input=i)
    wait_for(rig.settled, timeout=20)
    rig.stop()
    for topic, lines in sent.items():
        assert cluster.values(topic) == lines
    with cluster.lock:
        for _, topic, _, _, records in cluster.produced:
            mr = MemoryRecords(records)
            while (b := mr.next_batch()) is not None:
                assert all(bytes(r.value).startswith(topic.encode()) for r in b)
        conns = len(cluster.nodes[1].conns)
    assert conns <= 3  # bootstrap, then one shared connection (and a metadata one at most)
    snap = rig.ledger.snapshot()
    assert snap.confirmed_lines == 9000
    assert rig.sender.connected is False or rig.sender.health()["state"] in {
        "connected",
        "unavailable",
    }


def test_crash_is_logged_counted_and_survived(
    cluster: FakeCluster, rigs: list[Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error in the sender drops what it held as sender_error and it goes on."""
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
    assert snap.sent_lines == snap.confirmed_lines == 1
    assert snap.balanced
    assert cluster.values("logs") == [b"kept"]
    assert "sender_crashed" in rig.log.names()


_CODECS = ["gzip", *(c for c in ("lz4", "zstd", "snappy") if c in available_compressions())]


@pytest.mark.parametrize("name", _CODECS)
def test_compressed_batches_arrive(cluster: FakeCluster, rigs: list[Rig], name: str) -> None:
    """Compressed batches arrive whole and in order."""
    rig = Rig(cluster.bootstrap, compression=name)
    rigs.append(rig)
    rig.sender.start()
    lines = lines_of(5000)
    rig.put(lines)
    wait_for(rig.settled)
    rig.stop()
    # Confirmed means the broker answered a fence written after them: they are there.
    assert rig.ledger.snapshot().confirmed_lines == len(lines)
    assert cluster.values("logs") == lines


def test_idle_sender_is_cheap_and_stops_fast(cluster: FakeCluster, rigs: list[Rig]) -> None:
    """An idle sender sends no fences, burns no CPU and stops at once."""
    rig = Rig(cluster.bootstrap)
    rigs.append(rig)
    rig.sender.start()
    wait_for(lambda: rig.sender.connected)
    c0 = time.process_time()
    time.sleep(1.0)  # the measurement window: what an idle second costs
    assert time.process_time() - c0 < 0.25  # idle: no busy loop on either thread (one is ~1.0)
    assert rig.ledger.snapshot().events.get("kafka_fences", 0) == 0
    assert rig.stop(5.0) < 0.5
