"""scripts/kafka-local --security: the TLS and SASL listeners work from kafka-python."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import TopicAuthorizationFailedError

from tests.conftest import KAFKA_LOCAL, free_port
from tests.support.readback import collect_stray_sockets

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Settings of the caller's shell that would change the broker this module starts.
_SHAPE_VARS = (
    "KAFKA_NODES",
    "KAFKA_FAULT_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_SASL_SSL_PORT",
    "KAFKA_SSL_PORT",
    "KAFKA_SASL_PLAINTEXT_PORT",
    "KAFKA_BOOTSTRAP",
)


def _script(env: dict[str, str], *args: str, timeout: float) -> str:
    """Run scripts/kafka-local; its stdout, or a failure that shows its stderr."""
    proc = subprocess.run(
        [str(KAFKA_LOCAL), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"kafka-local {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc.stdout


@pytest.fixture(name="secure_kafka", scope="module")
def fixture_secure_kafka() -> Iterator[dict[str, str]]:
    """A broker of our own with the security listeners; the KEY=VALUE lines of ``env``."""
    home = Path(tempfile.mkdtemp(prefix="shipper-kafka-sec-"))
    env = {k: v for k, v in os.environ.items() if k not in _SHAPE_VARS}
    env.update(KAFKA_HOME_DIR=str(home), KAFKA_PORT=str(free_port()), KAFKA_SECURITY="1")
    try:
        _script(env, "start", timeout=240)
        out = _script(env, "env", timeout=30)
        yield dict(line.split("=", 1) for line in shlex.split(out))
    finally:
        subprocess.run(
            [str(KAFKA_LOCAL), "stop", "--purge"],
            env=env,
            capture_output=True,
            timeout=90,
            check=False,
        )
        shutil.rmtree(home, ignore_errors=True)


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
