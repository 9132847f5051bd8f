"""Every use of kafka-python beyond its public producer API lives here, so that an upgrade of
kafka-python touches one file; ``check`` fails loudly when an internal we rely on moved.

We use kafka-python 3's own network layer (selector, connection manager, cluster metadata,
protocol classes) to write pre-encoded record batches with acks=0, to send fences (small
requests whose answer confirms every produce written before them on a connection) and to
read the topic's and brokers' size limits; and we read a few private attributes to learn
how connection attempts end and to restart the metadata loop. Our connection manager also
retries after an authentication failure; ``ask_metadata`` serves ``validate --connect``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from shipper.kafka import partial, security

# kafka-python's package __init__ imports its producer, consumer and admin client, and each
# protocol package imports every API it has: about 6 MiB we never use. Load the packages
# without their __init__ (the rest of the process still gets them whole on first use, see
# ``partial``), with the names kafka-python's own modules import from them.
with warnings.catch_warnings():
    # kafka-python 3.0 reads its protocol schemas with importlib.resources.read_text/open_text
    # (deprecated since Python 3.11) at import: keep that out of logs and -W error runs.
    warnings.filterwarnings("ignore", r".* is deprecated\. Use files", DeprecationWarning)
    partial.package("kafka")
    # What kafka-python's __init__ does first: without a handler of its own, its warnings
    # ("Bootstrap failed: ...") would reach stderr through logging's last-resort handler.
    logging.getLogger("kafka").addHandler(logging.NullHandler())
    partial.package("kafka.net")
    partial.package("kafka.protocol")
    partial.package("kafka.protocol.admin", "groups", "configs")
    partial.package("kafka.protocol.consumer", "group", "offsets")
    partial.package("kafka.protocol.producer", "produce")
    import kafka.errors as kerr
    from kafka.future import Future
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector
    from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport
    from kafka.partitioner.default import murmur2 as _murmur2
    from kafka.protocol.admin import DescribeConfigsRequest
    from kafka.protocol.consumer import ListOffsetsRequest
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.producer import ProduceRequest
    from kafka.structs import TopicPartition

if TYPE_CHECKING:
    from shipper.config import KafkaConfig

__all__ = [
    "REQUEST_TIMEOUT_MS",
    "BrokerReply",
    "Future",
    "OnConnect",
    "TopicPartition",
    "abort",
    "ask_metadata",
    "backoff",
    "broker_ids",
    "check",
    "codec",
    "config_values",
    "connect_reason",
    "connections",
    "describe_broker",
    "describe_topic",
    "fence_request",
    "io_alive",
    "is_timeout",
    "kerr",
    "leader_ready_request",
    "murmur2",
    "new_client",
    "partition_error",
    "produce_frame",
    "produce_request",
    "restart_dead_refresh_loop",
    "retriable",
    "send_produce",
]

REQUEST_TIMEOUT_MS: Final = 30_000
# Produce v3..v9 name the topic; v13 wants topic ids. v9 is what kafka-python's producer uses.
_PRODUCE_MAX_VERSION: Final = 9
# Requests with a response a connection may have outstanding before kafka-python pauses it.
# Fences are bounded by max_in_flight_bytes, not by this: keep it out of their way.
_MAX_IN_FLIGHT_REQUESTS: Final = 1000
# DescribeConfigs resource types.
_TOPIC: Final = 2
_BROKER: Final = 4
_ACL_WRITE: Final = 4  # AclOperation WRITE: its bit in a topic's authorized operations

#: Called on the IO thread when a connection attempt ends: (node id, "host:port", None) once
#: it is ready (TLS, SASL and the version handshake done), or (..., exception) when it
#: failed. Bootstrap connections have string node ids ("bootstrap-0").
OnConnect = Callable[[Any, str, BaseException | None], None]


def codec() -> ModuleType:
    """kafka-python's codec module (snappy framing, lz4 and zstd helpers). Loaded on first
    use: it imports every compression library installed (about 2.5 MiB)."""
    return importlib.import_module("kafka.codec")


def murmur2(data: bytes) -> int:
    """Kafka's default partitioner hash of ``data`` (the Java client's ``Utils.murmur2``), as
    an unsigned 32-bit int."""
    return int(_murmur2(data))


class _Manager(KafkaConnectionManager):  # type: ignore[misc]  # kafka-python is untyped
    """kafka-python's connection manager, telling ``on_connect`` how each attempt ended.

    kafka-python keeps an authentication failure and raises it on every later
    ``get_connection`` without connecting again, so a daemon would never recover once the
    broker is fixed. Here the failure is reported once per attempt, and the node is retried
    after the usual reconnect backoff (``connect_backoff_max`` at most).
    """

    def __init__(self, net: Any, on_connect: OnConnect | None, **configs: Any) -> None:
        super().__init__(net, **configs)
        self._shipper_on_connect = on_connect

    async def _connect(self, node: Any, conn: Any, *args: Any, **kwargs: Any) -> None:
        await super()._connect(node, conn, *args, **kwargs)
        report = self._shipper_on_connect
        fut = conn.init_future
        if report is not None and fut.is_done:
            report(node.node_id, f"{node.host}:{node.port}", fut.exception)

    def maybe_raise_auth_failure(self, node_id: Any) -> None:
        """Do not refuse: get_connection's backoff check spaces the retries instead."""
        return


def _deliver_data_before_eof(cls: type[Any]) -> None:
    """kafka-python 3.0.12 drops bytes that arrive together with the peer's close: a broker
    that answers and hangs up (a failed SASL authentication, a TLS alert) then looks like a
    bare disconnect. Hand the bytes over first; the close follows on the next read."""
    recv = cls._sock_recv
    if getattr(recv, "_shipper_eof_first", False):
        return

    def _sock_recv(self: Any) -> tuple[bytes, BaseException | None]:
        held = self.__dict__.pop("_shipper_eof", None)
        if held is not None:
            return b"", held
        data, err = recv(self)
        if data and err is not None:
            self._shipper_eof = err  # the socket stays readable at EOF: read again at once
            return data, None
        return data, err

    _sock_recv._shipper_eof_first = True  # type: ignore[attr-defined]  # our marker: applied
    cls._sock_recv = _sock_recv


_deliver_data_before_eof(KafkaTCPTransport)
_deliver_data_before_eof(KafkaSSLTransport)

_IOV_MAX: Final = 64  # buffers per sendmsg (Linux allows 1024)


def _send_gathered(cls: type[Any]) -> None:
    """kafka-python 3.0.12 sends its write buffer one ``send`` per buffer. Send up to
    ``_IOV_MAX`` buffers per ``sendmsg`` instead: a produce request is three buffers (its
    head, the record batch, its tail: the batch is never copied) and its fence often follows
    at once, so one system call (one release of the GIL) writes what took four."""
    if getattr(cls._sock_send, "_shipper_gathered", False):
        return

    def _sock_send(self: Any) -> tuple[int, BaseException | None]:
        sock = self._sock
        if sock is None:
            return 0, kerr.KafkaConnectionError("Connection closed during send")
        pending = self._write_buffer
        total = 0
        while pending:
            try:
                sent = sock.sendmsg(list(islice(pending, _IOV_MAX)))
            except (BlockingIOError, InterruptedError):
                break
            except Exception as e:  # noqa: BLE001 - as kafka-python: the transport aborts
                return total, kerr.KafkaConnectionError(e)
            total += sent
            while pending:  # drop what went out; keep the rest of a buffer sent in part
                head = pending[0]
                size = head.nbytes if isinstance(head, memoryview) else len(head)
                if sent < size:
                    if sent:
                        pending[0] = memoryview(head).cast("B")[sent:]
                    break
                sent -= size
                pending.popleft()
        return total, None

    _sock_send._shipper_gathered = True  # type: ignore[attr-defined]  # our marker: applied
    cls._sock_send = _sock_send


_send_gathered(KafkaTCPTransport)  # TLS writes go through the SSL object: left as they are


def new_client(cfg: KafkaConfig, on_connect: OnConnect | None = None) -> tuple[Any, Any]:
    """Build kafka-python's selector and connection manager from our Kafka config, with
    the connection security of ``cfg.security``; ``on_connect`` hears how each connection
    attempt ends (on the IO thread)."""
    net = NetworkSelector(client_id=cfg.client_id)
    manager = _Manager(
        net,
        on_connect,
        bootstrap_servers=list(cfg.bootstrap_servers),
        client_id=cfg.client_id,
        reconnect_backoff_ms=100,
        reconnect_backoff_max_ms=int(cfg.connect_backoff_max * 1000),
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        metadata_max_age_ms=int(cfg.metadata_refresh * 1000),
        max_in_flight_requests_per_connection=_MAX_IN_FLIGHT_REQUESTS,
        **security.options(cfg.security),
    )
    return net, manager


@dataclass(slots=True)
class BrokerReply:
    """What one broker said to a Metadata request for one topic (``validate --connect``)."""

    address: str
    error: BaseException | None = None  # the connection or the request failed
    ready: bool = False  # the connection got through TLS, SASL and the version handshake
    tls: str | None = None  # the TLS version in use
    brokers: dict[int, str] = field(default_factory=dict)  # node id -> host:port
    topic_error: BaseException | None = None  # e.g. UnknownTopicOrPartitionError
    leaders: dict[int, int] = field(default_factory=dict)  # partition -> leader node id
    may_write: bool | None = None  # None: the broker did not say (older than Kafka 2.3)


def ask_metadata(cfg: KafkaConfig, address: str, topic: str, timeout: float) -> BrokerReply:
    """Connect to ``address`` alone with ``cfg``'s security, ask for ``topic``'s metadata and
    our rights on it (without creating it), and close. Never raises for a broker problem."""
    reply = BrokerReply(address)
    net = NetworkSelector(client_id=cfg.client_id)
    manager = _Manager(
        net,
        None,
        bootstrap_servers=[address],
        client_id=cfg.client_id,
        request_timeout_ms=int(timeout * 1000),
        socket_connection_setup_timeout_ms=int(timeout * 1000),
        socket_connection_setup_timeout_max_ms=int(timeout * 1000),
        **security.options(cfg.security),
    )
    node_id = manager.cluster.bootstrap_brokers()[0].node_id
    request = MetadataRequest(
        topics=[MetadataRequest.MetadataRequestTopic(name=topic)],
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=True,
    )

    async def ask() -> None:
        conn = manager.get_connection(node_id, timeout_ms=timeout * 1000)
        await manager.wait_for(conn.init_future, timeout * 1000)
        reply.ready = True
        sock = getattr(conn.transport, "_sock", None)
        version = getattr(sock, "version", None)
        reply.tls = version() if callable(version) else None
        response = await manager.wait_for(conn.send_request(request), timeout * 1000)
        _read_metadata(response, topic, reply)

    try:
        manager.run(ask)
    except Exception as e:  # noqa: BLE001 - every failure is the answer we report
        reply.error = e
    finally:
        manager.close()
        net.close()  # runs the closes just scheduled, then frees the selector
    # kafka-python 3.0.12 does not close the socket of a connect attempt that fails; the
    # garbage collector would, later, with a ResourceWarning in whatever code runs then.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        if reply.error is not None:
            _drop_frames(reply.error)
        gc.collect()
    return reply


def _drop_frames(exc: BaseException) -> None:
    """Drop the tracebacks of ``exc`` and what it carries: their frames hold sockets."""
    for e in security.exception_chain(exc):
        e.__traceback__ = None


def _read_metadata(response: Any, topic: str, reply: BrokerReply) -> None:
    reply.brokers = {b.node_id: f"{b.host}:{b.port}" for b in response.brokers}
    for t in response.topics:
        if t.name != topic:
            continue
        error = kerr.for_code(t.error_code)
        if error is not kerr.NoError:
            reply.topic_error = error()
            return
        reply.leaders = {p.partition_index: p.leader_id for p in t.partitions}
        ops = getattr(t, "authorized_operations", None)
        if isinstance(ops, set | frozenset):
            reply.may_write = _ACL_WRITE in ops


def produce_request(topic: str, partition: int, records: bytes) -> Any:
    """An acks=0 ProduceRequest carrying one pre-encoded record batch."""
    data = ProduceRequest.TopicProduceData
    return ProduceRequest(
        transactional_id=None,
        acks=0,
        timeout_ms=REQUEST_TIMEOUT_MS,
        topic_data=[
            data(
                name=topic,
                partition_data=[data.PartitionProduceData(index=partition, records=records)],
            )
        ],
        max_version=_PRODUCE_MAX_VERSION,
    )


def send_produce(conn: Any, topic: str, partition: int, batch: bytes) -> Any:
    """Write an acks=0 ProduceRequest carrying ``batch`` on ``conn``; return kafka-python's
    future for it (done once written, or failed if the connection could not take it).

    On a ready connection the request goes straight to the transport as three buffers,
    its head, the batch itself and its tail, in the bytes kafka-python would encode (the
    batch is not copied three times on its way, as kafka-python's encoder does); otherwise
    (connecting, SASL re-authentication, paused) through kafka-python's own path.
    """
    transport = conn.transport
    if (
        not conn.connected
        or conn.initializing
        or conn.paused
        or conn._reauth.is_reauthenticating
        or conn.parser.bytes_to_send
        or transport is None
    ):
        return conn.send_request(produce_request(topic, partition, batch))
    try:
        version = conn.broker_version_data.api_version(
            ProduceRequest, max_version=_PRODUCE_MAX_VERSION
        )
    except kerr.IncompatibleBrokerVersion as e:
        return Future().failure(e)
    parser = conn.parser
    head, tail = produce_frame(
        version,
        topic,
        partition,
        len(batch),
        correlation_id=parser._next_correlation_id(),
        client_id=parser._client_id,
    )
    transport.writelines((head, batch, tail) if tail else (head, batch))
    return Future().success(None)


_CLIENT_HEADER: Final = struct.Struct(">hhih")  # api key, version, correlation id, client id
_ACKS_TIMEOUT: Final = struct.Struct(">hi")


def produce_frame(
    version: int, topic: str, partition: int, size: int, *, correlation_id: int, client_id: str
) -> tuple[bytes, bytes]:
    """The bytes around a record batch of ``size`` bytes in a framed acks=0 ProduceRequest
    (request header included) of ``version`` (3 to 9): those before it and those after."""
    client = client_id.encode()
    name = topic.encode()
    header = _CLIENT_HEADER.pack(0, version, correlation_id, len(client)) + client
    timeout = _ACKS_TIMEOUT.pack(0, REQUEST_TIMEOUT_MS)
    if version >= 9:  # flexible: compact arrays, strings and bytes; tagged fields
        body = (
            b"\x00"  # header tagged fields
            + b"\x00"  # transactional_id: null
            + timeout
            + b"\x02"  # one topic
            + _uvarint(len(name) + 1)
            + name
            + b"\x02"  # one partition
            + struct.pack(">i", partition)
            + _uvarint(size + 1)
        )
        tail = b"\x00\x00\x00"  # partition, topic and request tagged fields
    else:
        body = (
            b"\xff\xff"  # transactional_id: null
            + timeout
            + struct.pack(">ih", 1, len(name))
            + name
            + struct.pack(">iii", 1, partition, size)
        )
        tail = b""
    head = header + body
    return struct.pack(">i", len(head) + size + len(tail)) + head, tail


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fence_request() -> Any:
    """A fence: the smallest request with a small answer (Metadata for no topic).

    Kafka handles one connection's requests one at a time, in order, and closes the
    connection when an acks=0 produce fails; so when this is answered, every produce written
    before it on the same connection was appended by the leader.
    """
    return MetadataRequest(
        topics=MetadataRequest.NO_TOPICS,
        allow_auto_topic_creation=False,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
        min_version=1,  # v0 reads an empty topic list as "every topic"
    )


def leader_ready_request(topic: str, partition: int) -> Any:
    """ListOffsets (latest) for one partition: its leader answers it without an error only
    once the partition is in its log, and a produce before then is refused (a topic just
    created, a leader just elected, a broker still loading its logs)."""
    part = ListOffsetsRequest.ListOffsetsTopic.ListOffsetsPartition
    return ListOffsetsRequest(
        replica_id=-1,
        isolation_level=0,
        topics=[
            ListOffsetsRequest.ListOffsetsTopic(
                name=topic,
                partitions=[
                    part(
                        partition_index=partition,
                        current_leader_epoch=-1,
                        timestamp=-1,
                        max_num_offsets=1,
                    )
                ],
            )
        ],
        min_version=1,
    )


def partition_error(response: Any, topic: str, partition: int) -> BaseException | None:
    """The error a ListOffsets answer gives for ``partition`` of ``topic`` (None: ready)."""
    for t in response.topics:
        if t.name != topic:
            continue
        for p in t.partitions:
            if p.partition_index == partition:
                error = kerr.for_code(p.error_code)
                found: BaseException | None = None if error is kerr.NoError else error()
                return found
    missing: BaseException = kerr.UnknownTopicOrPartitionError(f"{topic}-{partition}: no answer")
    return missing


def describe_topic(topic: str) -> Any:
    """DescribeConfigs for the topic's ``max.message.bytes`` (its largest record batch)."""
    return _describe(_TOPIC, topic, "max.message.bytes")


def describe_broker(node_id: int) -> Any:
    """DescribeConfigs for a broker's ``message.max.bytes``; send it to that broker."""
    return _describe(_BROKER, str(node_id), "message.max.bytes")


def _describe(kind: int, name: str, key: str) -> Any:
    resource = DescribeConfigsRequest.DescribeConfigsResource
    return DescribeConfigsRequest(
        resources=[resource(resource_type=kind, resource_name=name, configuration_keys=[key])],
        include_synonyms=False,
        include_documentation=False,
    )


def config_values(response: Any) -> dict[str, str]:
    """The ``{name: value}`` of a DescribeConfigs answer; the resource's error is raised."""
    out: dict[str, str] = {}
    for result in response.results:
        error = kerr.for_code(result.error_code)
        if error is not kerr.NoError:
            raise error(result.error_message or result.resource_name)
        for entry in result.configs:
            if entry.value is not None:
                out[entry.name] = entry.value
    return out


def io_alive(net: Any) -> bool:
    """False once the selector's IO thread has died (or was never started)."""
    thread = net._io_thread
    return thread is not None and thread.is_alive() and net._exception is None


def connections(manager: Any) -> list[Any]:
    """The manager's current connections (any state)."""
    return list(manager._conns.values())


def broker_ids(cluster: Any) -> list[int]:
    """Node ids of the brokers in the latest metadata."""
    return [b.node_id for b in cluster.brokers()]


def abort(conn: Any, reason: str) -> None:
    """Close a connection at once, discarding what it still holds."""
    if conn.transport is not None:
        conn.transport.abort(kerr.KafkaConnectionError(reason))


def backoff(manager: Any, node_id: Any) -> None:
    """Make the next connection to ``node_id`` wait (exponential backoff, as after a failed
    connect), so a broker that stalls is not hammered."""
    manager.update_backoff(node_id)


def is_timeout(exc: BaseException | None) -> bool:
    """True for kafka-python's "a request went unanswered" errors."""
    return isinstance(exc, kerr.RequestTimedOutError | kerr.KafkaTimeoutError)


def retriable(exc: BaseException) -> bool:
    """True when trying again later may succeed (a network error, a timeout, a node not
    ready); False for an answer that will not change (not authorized, not supported)."""
    return bool(getattr(exc, "retriable", False))


def connect_reason(exc: BaseException) -> str:
    """Why a connection attempt failed, as one stable word: ``security.reason`` (TLS, SASL,
    refused, unknown host, timeout, closed...), or ``not_kafka`` when bytes came back that
    are no Kafka answer (an HTTP server, say). The one place an exception becomes a reason.
    """
    why = security.reason(exc)
    if why == "connection_failed" and _not_kafka(exc):
        return "not_kafka"
    return why


def _not_kafka(exc: BaseException) -> bool:
    return any(
        isinstance(e, kerr.KafkaProtocolError) or "correlation id" in str(e).lower()
        for e in security.exception_chain(exc)
    )


def restart_dead_refresh_loop(cluster: Any) -> BaseException | None:
    """kafka-python never restarts a metadata refresh loop that died (a bootstrap error, for
    one): restart it and return what killed it, or None if it is alive."""
    fut = getattr(cluster, "_refresh_loop_future", None)
    if fut is None or not fut.is_done:
        return None
    cluster._refresh_loop_future = None
    cluster.request_update()
    exc: BaseException | None = fut.exception
    return exc if exc is not None else RuntimeError("metadata refresh loop ended")


def _check_produce_frame(net: Any) -> None:
    """``send_produce``'s way round kafka-python: the connection state it reads, and the
    bytes it writes, which must be kafka-python's own for every version it may use."""
    from kafka.net.connection import KafkaConnection  # noqa: PLC0415 - loaded by the manager
    from kafka.protocol.parser import KafkaProtocol  # noqa: PLC0415 - loaded with it

    conn = KafkaConnection(net, node_id="shipper-check")  # connects nowhere until asked
    for name in ("send_request", "transport", "parser", "connected", "initializing", "paused"):
        assert hasattr(conn, name), f"kafka-python moved KafkaConnection.{name}"
    assert hasattr(conn, "broker_version_data"), "kafka-python moved broker_version_data"
    assert hasattr(conn._reauth, "is_reauthenticating"), "kafka-python moved re-authentication"
    protocol = KafkaProtocol(client_id="shipper-check")
    for name in ("_next_correlation_id", "_client_id", "bytes_to_send"):
        assert hasattr(protocol, name), f"kafka-python moved KafkaProtocol.{name}"
    for version in range(3, _PRODUCE_MAX_VERSION + 1):
        req = produce_request("check", 7, b"records")
        req.API_VERSION = version
        req.with_header(correlation_id=42, client_id="shipper-check")
        want = bytes(req.encode(framed=True, header=True))
        head, tail = produce_frame(
            version, "check", 7, len(b"records"), correlation_id=42, client_id="shipper-check"
        )
        assert head + b"records" + tail == want, f"ProduceRequest v{version} layout changed"


def check() -> None:
    """Raise AssertionError naming the first kafka-python internal that is not where we use it.

    Builds a selector and a manager without connecting anywhere, and looks for each private
    attribute and method this module relies on.
    """
    net = NetworkSelector(client_id="shipper-check")
    manager = _Manager(net, None, bootstrap_servers=["127.0.0.1:1"])
    try:
        wanted = (
            (
                net,
                (
                    "_io_thread",
                    "_exception",
                    "start",
                    "stop",
                    "close",
                    "call_soon",
                    "call_soon_threadsafe",
                    "call_later",
                    "cancel",
                    "sleep",
                ),
            ),
            (
                manager,
                (
                    "_conns",
                    "_connect",
                    "cluster",
                    "get_connection",
                    "maybe_raise_auth_failure",
                    "bootstrapped",
                    "close",
                    "run",
                    "send",
                    "update_backoff",
                    "wait_for",
                ),
            ),
            (
                manager.cluster,
                (
                    "_refresh_loop_future",
                    "request_update",
                    "add_topic",
                    "add_listener",
                    "brokers",
                    "broker_metadata",
                    "partitions_for_topic",
                    "leader_for_partition",
                ),
            ),
            (KafkaTCPTransport, ("_sock_recv", "abort", "is_closing", "writelines")),
            (KafkaSSLTransport, ("_sock_recv",)),
        )
        for obj, names in wanted:
            for name in names:
                owner = obj if isinstance(obj, type) else type(obj)
                assert hasattr(obj, name), f"kafka-python moved {owner.__name__}.{name}"
        assert hasattr(ProduceRequest, "TopicProduceData"), "ProduceRequest layout changed"
        assert hasattr(MetadataRequest, "MetadataRequestTopic"), "MetadataRequest layout changed"
        assert hasattr(DescribeConfigsRequest, "DescribeConfigsResource"), (
            "DescribeConfigsRequest layout changed"
        )
        assert hasattr(ListOffsetsRequest.ListOffsetsTopic, "ListOffsetsPartition"), (
            "ListOffsetsRequest layout changed"
        )
        for cls in (KafkaTCPTransport, KafkaSSLTransport):
            assert getattr(cls._sock_recv, "_shipper_eof_first", False), "recv fix not applied"
        assert getattr(KafkaTCPTransport._sock_send, "_shipper_gathered", False), (
            "gathered send not applied"
        )
        for name in ("_write_buffer", "_sock"):  # what the gathered send reads
            assert name in KafkaTCPTransport._write_to_sock.__code__.co_names + (
                KafkaTCPTransport.write.__code__.co_names
            ), f"kafka-python moved KafkaTCPTransport.{name}"
        _check_produce_frame(net)
    finally:
        manager.close()
        net.close()
