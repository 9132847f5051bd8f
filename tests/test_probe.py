"""validate --connect's check: one line per broker with the reason, and False when any
broker, the topic or our right to write is not right (brokers live in tests/integration)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator

import pytest

from shipper.config import KafkaConfig, build
from shipper.kafka.probe import probe


@pytest.fixture(name="plaintext_port")
def fixture_plaintext_port() -> Iterator[int]:
    """A port that accepts a connection, reads what comes and hangs up (not TLS)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    listener.close()
    thread.join(10)


def test_each_bootstrap_server_gets_a_line_with_its_reason(plaintext_port: int) -> None:
    """Two bootstrap servers, both unusable for different reasons: one line each, the
    security summary first, and the check fails."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = s.getsockname()[1]
    servers = [f"localhost:{plaintext_port}", f"127.0.0.1:{closed}"]
    cfg = build(
        KafkaConfig,
        bootstrap_servers=servers,
        topic="logs",
        security={"protocol": "ssl", "tls": {"verify_hostname": False}},
    )
    out = io.StringIO()
    assert probe(cfg, out, timeout=5.0) is False
    lines = out.getvalue().splitlines()
    assert lines[0] == "kafka: protocol ssl, CA system store, host names NOT verified"
    assert lines[1].startswith(f"  {servers[0]} (bootstrap): FAILED tls_to_plaintext_port: ")
    assert lines[2].startswith("    (")
    assert lines[3].startswith(f"  {servers[1]} (bootstrap): FAILED connection_refused: ")
    assert lines[-1] == "kafka: FAILED: no bootstrap server could be used"
