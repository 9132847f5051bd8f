"""The kafka-python internals the sender relies on are where ``compat`` reads them."""

from __future__ import annotations

import pytest
from kafka.protocol.admin import DescribeConfigsResponse

from shipper.kafka import compat


def test_every_internal_we_use_is_still_there() -> None:
    """An upgrade of kafka-python that moves an internal fails here, by name, not in use."""
    compat.check()


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
