"""scripts/kafka-local --security: the TLS and SASL listeners work from kafka-python."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAuthorizationFailedError

from tests.integration.conftest import Secure
from tests.support.readback import collect_stray_sockets

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(name="secure_kafka")
def fixture_secure_kafka(secure: Secure) -> dict[str, str]:
    """The KEY=VALUE lines of the secured broker's ``kafka-local env``."""
    return secure.env


def _secret(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _round_trip(**cfg: Any) -> list[bytes]:
    """Produce one record to a fresh topic and read it back with the same settings."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    value = f"hello {topic}".encode()
    producer = KafkaProducer(**cfg, max_block_ms=30_000, request_timeout_ms=20_000)
    try:
        producer.send(topic, value).get(timeout=30)
    finally:
        producer.close(timeout=10)
        collect_stray_sockets()
    consumer = KafkaConsumer(**cfg, auto_offset_reset="earliest", enable_auto_commit=False)
    got: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(r.value for r in records)
    finally:
        consumer.close()
        collect_stray_sockets()
    assert got == [value]
    return got


def test_scram_sha_512_over_sasl_ssl(secure_kafka: dict[str, str]) -> None:
    """A SCRAM-SHA-512 user produces and consumes over SASL_SSL, verifying the CA and host."""
    _round_trip(
        bootstrap_servers=secure_kafka["KAFKA_SASL_SSL_BOOTSTRAP"],
        security_protocol="SASL_SSL",
        ssl_cafile=secure_kafka["KAFKA_CA_FILE"],
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=secure_kafka["KAFKA_SCRAM_USER"],
        sasl_plain_password=_secret(secure_kafka["KAFKA_SCRAM_PASSWORD_FILE"]),
    )


def test_mutual_tls(secure_kafka: dict[str, str]) -> None:
    """A client certificate signed by the test CA produces and consumes over SSL (mTLS)."""
    _round_trip(
        bootstrap_servers=secure_kafka["KAFKA_SSL_BOOTSTRAP"],
        security_protocol="SSL",
        ssl_cafile=secure_kafka["KAFKA_CA_FILE"],
        ssl_certfile=secure_kafka["KAFKA_CLIENT_CERT"],
        ssl_keyfile=secure_kafka["KAFKA_CLIENT_KEY_ENCRYPTED"],
        ssl_password=_secret(secure_kafka["KAFKA_CLIENT_KEY_PASSWORD_FILE"]),
    )


def test_denied_user_may_not_write(secure_kafka: dict[str, str]) -> None:
    """The ``denied`` user authenticates, but the ACL refuses its writes."""
    producer = KafkaProducer(
        bootstrap_servers=secure_kafka["KAFKA_SASL_SSL_BOOTSTRAP"],
        security_protocol="SASL_SSL",
        ssl_cafile=secure_kafka["KAFKA_CA_FILE"],
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=secure_kafka["KAFKA_DENIED_USER"],
        sasl_plain_password=_secret(secure_kafka["KAFKA_DENIED_PASSWORD_FILE"]),
        max_block_ms=30_000,
    )
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(f"t-{uuid.uuid4().hex[:12]}", b"x").get(timeout=30)
    finally:
        producer.close(timeout=10)
        collect_stray_sockets()
