"""Every use of kafka-python beyond its public producer API lives here, so that an upgrade of
kafka-python touches one file; ``check`` fails loudly when an internal we rely on moved.

We use kafka-python 3's own network layer (selector, connection manager, cluster metadata,
protocol classes) to write pre-encoded record batches with acks=0, and we read a few of its
private attributes to bound the bytes a connection holds and to restart its metadata loop.
Our connection manager also says how each connection attempt ended (``on_connect``) and
retries after an authentication failure; ``ask_metadata`` serves ``validate --connect``.
"""

from __future__ import annotations

import fcntl
import gc
import socket
import struct
import termios
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

with warnings.catch_warnings():
    # kafka-python 3.0 reads its protocol schemas with importlib.resources.read_text/open_text
    # (deprecated since Python 3.11) at import: keep that out of logs and -W error runs.
    warnings.filterwarnings("ignore", r".* is deprecated\. Use files", DeprecationWarning)
    import kafka.codec
    import kafka.errors as kerr
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector
    from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.producer import ProduceRequest
    from kafka.structs import TopicPartition

from shipper.kafka import security

if TYPE_CHECKING:
    from shipper.config import KafkaConfig

__all__ = [
    "REQUEST_TIMEOUT_MS",
    "BrokerReply",
    "OnConnect",
    "TopicPartition",
    "abort",
    "ask_metadata",
    "buffered",
    "check",
    "codec",
    "connections",
    "io_alive",
    "kernel_outq",
    "kerr",
    "new_client",
    "produce_request",
    "restart_dead_refresh_loop",
]

REQUEST_TIMEOUT_MS: Final = 30_000
# Produce v3..v9 name the topic; v13 wants topic ids. v9 is what kafka-python's producer uses.
_PRODUCE_MAX_VERSION: Final = 9
_ACL_WRITE: Final = 4  # AclOperation WRITE: its bit in a topic's authorized operations

#: Called on the IO thread when a connection attempt ends: ("host:port", None) once it is
#: ready (TLS, SASL and the version handshake done), ("host:port", exception) when it failed.
OnConnect = Callable[[str, BaseException | None], None]


def codec() -> ModuleType:
    """kafka-python's codec module (snappy framing, lz4 and zstd helpers)."""
    codec_module: ModuleType = kafka.codec
    return codec_module


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
            report(f"{node.host}:{node.port}", fut.exception)

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


def new_client(cfg: KafkaConfig, on_connect: OnConnect | None = None) -> tuple[Any, Any]:
    """Build kafka-python's selector and connection manager from our Kafka config, with
    the connection security of ``cfg.security``."""
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
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        todo.extend(
            x for x in (e.__cause__, e.__context__, *e.args) if isinstance(x, BaseException)
        )


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


def io_alive(net: Any) -> bool:
    """False once the selector's IO thread has died (or was never started)."""
    thread = net._io_thread
    return thread is not None and thread.is_alive() and net._exception is None


def connections(manager: Any) -> list[Any]:
    """The manager's current connections (any state)."""
    return list(manager._conns.values())


def buffered(conn: Any) -> int:
    """Bytes a connection holds in user space (written to it, not yet to the socket)."""
    n = 0
    transport = conn.transport
    if transport is not None:
        # kafka-python 3.0 has no get_write_buffer_size(); its transport is a deque of chunks.
        n = sum(map(len, transport._write_buffer))
    parser = conn.parser
    if parser is not None and parser.bytes_to_send:
        n += sum(map(len, parser.bytes_to_send))
    return n


def kernel_outq(conn: Any) -> int:
    """Bytes in the socket's kernel send queue (Linux TIOCOUTQ); 0 when unknown."""
    sock = getattr(conn.transport, "_sock", None)
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\x00\x00\x00\x00")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def abort(conn: Any, reason: str) -> None:
    """Close a connection at once, discarding what it still holds."""
    if conn.transport is not None:
        conn.transport.abort(kerr.KafkaConnectionError(reason))


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


def check() -> None:
    """Raise AssertionError naming the first kafka-python internal that is not where we use it.

    Builds a selector, a manager and a transport over a socketpair without connecting
    anywhere, and looks for each private attribute this module reads.
    """
    net = NetworkSelector(client_id="shipper-check")
    manager = KafkaConnectionManager(net, bootstrap_servers=["127.0.0.1:1"])
    a, b = socket.socketpair()
    try:
        transport = KafkaTCPTransport(net, a)
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
                    "partitions_for_topic",
                    "leader_for_partition",
                ),
            ),
            (transport, ("_write_buffer", "_sock", "_sock_recv", "abort", "is_closing")),
            (KafkaSSLTransport, ("_sock_recv",)),
        )
        for obj, names in wanted:
            for name in names:
                owner = obj if isinstance(obj, type) else type(obj)
                assert hasattr(obj, name), f"kafka-python moved {owner.__name__}.{name}"
        assert hasattr(ProduceRequest, "TopicProduceData"), "ProduceRequest layout changed"
        assert hasattr(MetadataRequest, "MetadataRequestTopic"), "MetadataRequest layout changed"
        for cls in (KafkaTCPTransport, KafkaSSLTransport):
            assert getattr(cls._sock_recv, "_shipper_eof_first", False), "recv fix not applied"
    finally:
        manager.close()
        net.close()
        a.close()
        b.close()
