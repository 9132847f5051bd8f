"""Every use of kafka-python beyond its public producer API lives here, so that an upgrade of
kafka-python touches one file; ``check`` fails loudly when an internal we rely on moved.

We use kafka-python 3's own network layer (selector, connection manager, cluster metadata,
protocol classes) to write pre-encoded record batches with acks=0, to send fences (small
requests whose answer confirms every produce written before them on a connection) and to
read the topic's and brokers' size limits; and we read a few private attributes to learn
how connection attempts end and to restart the metadata loop.
"""

from __future__ import annotations

import errno
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

with warnings.catch_warnings():
    # kafka-python 3.0 reads its protocol schemas with importlib.resources.read_text/open_text
    # (deprecated since Python 3.11) at import: keep that out of logs and -W error runs.
    warnings.filterwarnings("ignore", r".* is deprecated\. Use files", DeprecationWarning)
    import kafka.codec
    import kafka.errors as kerr
    from kafka.future import Future
    from kafka.net.manager import KafkaConnectionManager
    from kafka.net.selector import NetworkSelector
    from kafka.protocol.admin import DescribeConfigsRequest
    from kafka.protocol.metadata import MetadataRequest
    from kafka.protocol.producer import ProduceRequest
    from kafka.structs import TopicPartition

if TYPE_CHECKING:
    from shipper.config import KafkaConfig

__all__ = [
    "REQUEST_TIMEOUT_MS",
    "ConnectHook",
    "Future",
    "TopicPartition",
    "abort",
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
    "new_client",
    "produce_request",
    "restart_dead_refresh_loop",
    "retriable",
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

#: Called on the IO thread when a connection attempt ends: (node id, "host:port", error or
#: None when the connection is ready).
ConnectHook = Callable[[Any, str, BaseException | None], None]


def codec() -> ModuleType:
    """kafka-python's codec module (snappy framing, lz4 and zstd helpers)."""
    codec_module: ModuleType = kafka.codec
    return codec_module


class _Manager(KafkaConnectionManager):  # type: ignore[misc]  # untyped library class
    """kafka-python's connection manager, telling us how every connection attempt ends."""

    def __init__(self, net: Any, on_connect: ConnectHook | None, **configs: Any) -> None:
        super().__init__(net, **configs)
        self._on_connect = on_connect

    def get_connection(self, node_id: Any, *args: Any, **kwargs: Any) -> Any:
        fresh = node_id not in self._conns
        conn = super().get_connection(node_id, *args, **kwargs)
        hook = self._on_connect
        if fresh and hook is not None:
            node = self.cluster.broker_metadata(node_id)
            address = f"{node.host}:{node.port}" if node is not None else "?"

            def done(value: Any) -> None:
                hook(node_id, address, value if isinstance(value, BaseException) else None)

            conn.init_future.add_both(done)
        return conn


def new_client(cfg: KafkaConfig, on_connect: ConnectHook | None = None) -> tuple[Any, Any]:
    """Build kafka-python's selector and connection manager from our Kafka config;
    ``on_connect`` hears how each connection attempt ends (on the IO thread)."""
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


# Words in kafka-python's connection errors, and the reason each one means, in order.
_REASON_WORDS: Final = (
    ("DNS", "dns_failure"),
    ("ECONNREFUSED", "connection_refused"),
    ("refused", "connection_refused"),
    ("timed out", "connect_timeout"),
    ("Handshake failed", "tls_failure"),
    # The peer hung up in the handshake: not a Kafka listener, or one expecting TLS/SASL.
    ("disconnected", "closed_in_handshake"),
    (errno.errorcode[errno.ECONNRESET], "closed_in_handshake"),
)


def connect_reason(exc: BaseException) -> str:
    """Why a connection attempt failed, as one stable word (the README lists them).

    The one place an exception becomes a reason: TLS and SASL classifiers plug in here.
    """
    if isinstance(exc, kerr.SaslAuthenticationFailedError | kerr.AuthorizationError):
        return "auth_failed"
    text = str(exc)
    if isinstance(exc, kerr.KafkaProtocolError) or "correlation id" in text.lower():
        return "not_kafka"  # bytes came back, but not a Kafka answer (an HTTP server...)
    if is_timeout(exc):
        return "no_response"  # connected, then no answer to ApiVersions in time
    for word, reason in _REASON_WORDS:
        if word in text:
            return reason
    return "connect_error"


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
                    "sleep",
                ),
            ),
            (
                manager,
                (
                    "_conns",
                    "cluster",
                    "get_connection",
                    "bootstrapped",
                    "close",
                    "send",
                    "update_backoff",
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
        )
        for obj, names in wanted:
            for name in names:
                assert hasattr(obj, name), f"kafka-python moved {type(obj).__name__}.{name}"
        assert hasattr(ProduceRequest, "TopicProduceData"), "ProduceRequest layout changed"
        assert hasattr(DescribeConfigsRequest, "DescribeConfigsResource"), (
            "DescribeConfigsRequest layout changed"
        )
    finally:
        manager.close()
        net.close()
