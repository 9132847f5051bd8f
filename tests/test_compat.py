"""The kafka-python internals the sender relies on are where ``compat`` reads them."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import time

import pytest
from kafka.protocol.admin import DescribeConfigsResponse

from shipper.kafka import compat


def test_every_internal_we_use_is_still_there() -> None:
    """An upgrade of kafka-python that moves an internal fails here, by name, not in use."""
    compat.check()


# Imported in a fresh interpreter: the daemon's modules, what they loaded, then kafka-python's
# consumer as a test helper or another library would import it afterwards.
_FRESH = """
import sys
import shipper.daemon, shipper.cli
from shipper.kafka import compat
compat.check()
print(" ".join(sorted(sys.modules)))
from kafka import KafkaConsumer
from kafka.protocol.admin import CreateTopicsRequest
print(KafkaConsumer.__name__, CreateTopicsRequest.__name__)
"""


def test_the_daemon_loads_only_what_it_uses() -> None:
    """The daemon's imports load no kafka-python client (producer, consumer, admin), no
    compression library, not crc32c's command line, no HTTP library; and whoever imports
    kafka-python's consumer later in the same process still gets it."""
    out = subprocess.run(
        [sys.executable, "-c", _FRESH], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    loaded = set(out[0].split())
    assert "kafka.net.manager" in loaded
    unwanted = {
        "kafka.producer",
        "kafka.consumer",
        "kafka.admin",
        "kafka.protocol.admin.acl",
        "kafka.codec",
        "snappy",
        "zstandard",
        "lz4",
        "crc32c._cli",
        "prometheus_client",
        "http.server",
        "http.client",
    }
    assert loaded & unwanted == set()
    assert out[1] == "KafkaConsumer CreateTopicsRequest"


@pytest.mark.parametrize("version", range(3, 10))
def test_produce_frame_is_kafka_pythons_own_request(version: int) -> None:
    """The bytes written around a batch make the very request kafka-python would encode, at
    each Produce version the client may use (v9 is flexible: compact sizes, tagged fields)."""
    batch = bytes(range(256)) * 700  # longer than a one-byte (or two-byte) length
    req = compat.produce_request("a-topic", 70_000, batch)
    req.API_VERSION = version
    req.with_header(correlation_id=123_456, client_id="shipper-host-1")
    head, tail = compat.produce_frame(
        version, "a-topic", 70_000, len(batch), correlation_id=123_456, client_id="shipper-host-1"
    )
    assert head + batch + tail == bytes(req.encode(framed=True, header=True))


def test_writes_go_out_whole_and_in_order_through_short_sends() -> None:
    """The transport's gathered send writes every buffer, in order, across partial sends and
    a full socket buffer (the reader drains it slowly)."""
    net = compat.NetworkSelector(client_id="shipper-test")
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pieces = [bytes([i % 251]) * (1 + i * 997 % 70_000) for i in range(200)]
    pieces.insert(50, memoryview(b"view" * 1000)[3:])
    want = b"".join(pieces)
    got = bytearray()
    try:
        transport = compat.KafkaTCPTransport(net, ours)
        transport.writelines(pieces)
        theirs.settimeout(0.001)
        deadline = time.monotonic() + 30
        while len(got) < len(want) and time.monotonic() < deadline:
            net.poll(timeout_ms=1)
            with contextlib.suppress(TimeoutError):
                got += theirs.recv(16384)
        assert bytes(got) == want
    finally:
        ours.close()
        theirs.close()
        net.close()


def test_produce_request_is_acks_zero_with_our_batch() -> None:
    """The request we build is acks=0 and carries the encoded batch untouched."""
    req = compat.produce_request("logs", 3, b"records")
    assert req.acks == 0
    (topic,) = req.topic_data
    assert topic.name == "logs"
    (part,) = topic.partition_data
    assert (part.index, part.records) == (3, b"records")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (compat.kerr.KafkaConnectionError("DNS Resolution failure"), "unknown_host"),
        (compat.kerr.KafkaConnectionError("111 ECONNREFUSED"), "connection_refused"),
        (compat.kerr.KafkaConnectionError("Connection timed out"), "timeout"),
        (compat.kerr.KafkaTimeoutError("Timeout during ApiVersions check"), "timeout"),
        (compat.kerr.CorrelationIdError("Correlation IDs do not match"), "not_kafka"),
        (compat.kerr.KafkaProtocolError("Invalid frame length: 1213486160"), "not_kafka"),
        (compat.kerr.KafkaConnectionError("socket disconnected"), "connection_closed"),
        (compat.kerr.SaslAuthenticationFailedError("bad password"), "wrong_password"),
        (compat.kerr.KafkaConnectionError("something else"), "connection_failed"),
    ],
)
def test_connect_errors_become_reasons(error: BaseException, reason: str) -> None:
    """Each way a connection attempt fails (as kafka-python reports it) has its reason:
    security's, or not_kafka for an answer that is not Kafka's."""
    assert compat.connect_reason(error) == reason


def test_the_fence_asks_for_no_topic() -> None:
    """A fence is a Metadata request for no topic, never v0 (where none means all)."""
    req = compat.fence_request()
    assert req.topics == []
    assert req.allow_auto_topic_creation is False
    assert req.expect_response()


def test_config_values_raise_the_resources_error() -> None:
    """DescribeConfigs answers become {name: value}; an error code is raised, not ignored."""
    r = DescribeConfigsResponse.DescribeConfigsResult
    entry = r.DescribeConfigsResourceResult(name="max.message.bytes", value="65536")
    ok = DescribeConfigsResponse(
        results=[r(error_code=0, resource_type=2, resource_name="t", configs=[entry])]
    )
    assert compat.config_values(ok) == {"max.message.bytes": "65536"}
    denied = DescribeConfigsResponse(
        results=[r(error_code=29, error_message="denied", resource_type=2, resource_name="t")]
    )
    with pytest.raises(compat.kerr.TopicAuthorizationFailedError):
        compat.config_values(denied)


def test_kafka_python_logs_only_where_we_route_them() -> None:
    """kafka-python's package __init__ is skipped, so its NullHandler is added by us: its
    warnings never reach stderr through logging's last-resort handler."""
    handlers = logging.getLogger("kafka").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
