"""Every use of kafka-python beyond its public producer API lives here, so that an upgrade of
kafka-python touches one file; ``check`` fails loudly when an internal we rely on moved.

We use kafka-python 3's own network layer (selector, connection manager, cluster metadata,
protocol classes) to write pre-encoded record batches with acks=0, and we read a few of its
private attributes to bound the bytes a connection holds and to restart its metadata loop.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import warnings
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
    from kafka.net.transport import KafkaTCPTransport
    from kafka.partitioner.default import murmur2 as _murmur2
    from kafka.protocol.producer import ProduceRequest
    from kafka.structs import TopicPartition

if TYPE_CHECKING:
    from shipper.config import KafkaConfig

__all__ = [
    "REQUEST_TIMEOUT_MS",
    "TopicPartition",
    "abort",
    "buffered",
    "check",
    "codec",
    "connections",
    "io_alive",
    "kernel_outq",
    "kerr",
    "murmur2",
    "new_client",
    "produce_request",
    "restart_dead_refresh_loop",
]

REQUEST_TIMEOUT_MS: Final = 30_000
# Produce v3..v9 name the topic; v13 wants topic ids. v9 is what kafka-python's producer uses.
_PRODUCE_MAX_VERSION: Final = 9


def codec() -> ModuleType:
    """kafka-python's codec module (snappy framing, lz4 and zstd helpers)."""
    codec_module: ModuleType = kafka.codec
    return codec_module


def murmur2(data: bytes) -> int:
    """Kafka's default partitioner hash of ``data`` (the Java client's ``Utils.murmur2``), as
    an unsigned 32-bit int."""
    return int(_murmur2(data))


def new_client(cfg: KafkaConfig) -> tuple[Any, Any]:
    """Build kafka-python's selector and connection manager from our Kafka config."""
    net = NetworkSelector(client_id=cfg.client_id)
    manager = KafkaConnectionManager(
        net,
        bootstrap_servers=list(cfg.bootstrap_servers),
        client_id=cfg.client_id,
        reconnect_backoff_ms=100,
        reconnect_backoff_max_ms=int(cfg.connect_backoff_max * 1000),
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        metadata_max_age_ms=int(cfg.metadata_refresh * 1000),
    )
    return net, manager


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
            (manager, ("_conns", "cluster", "get_connection", "bootstrapped", "close")),
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
            (transport, ("_write_buffer", "_sock", "abort", "is_closing")),
        )
        for obj, names in wanted:
            for name in names:
                assert hasattr(obj, name), f"kafka-python moved {type(obj).__name__}.{name}"
        assert hasattr(ProduceRequest, "TopicProduceData"), "ProduceRequest layout changed"
    finally:
        manager.close()
        net.close()
        a.close()
        b.close()
