"""Shared fixtures: a real Kafka broker for the session, and a thread-leak check."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from shipper.log import configure

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (where outgoing connections get
    their local port)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port free a moment ago on 127.0.0.1, and the one after it too (kafka-local
    puts a broker's controller there), below the ephemeral range: a port the kernel hands
    out (bind to 0) may be taken by any outgoing connection before a broker binds it, and
    then the broker fails to start ("Address already in use")."""
    low = _ephemeral_low()
    if low > 10_002:
        for _ in range(100):
            port = random.randrange(10_000, low - 1)
            if _bindable(port) and _bindable(port + 1):
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A broker the tests may use; stoppable and restartable when we started it."""

    def __init__(self, bootstrap: str, home: Path | None, port: int | None) -> None:
        self.bootstrap = bootstrap
        self.home = home
        self.port = port

    @property
    def managed(self) -> bool:
        """True when this session started the broker (so it may stop it)."""
        return self.home is not None

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KAFKA_HOME_DIR"] = str(self.home)
        env["KAFKA_PORT"] = str(self.port)
        return env

    def start(self) -> None:
        """Start (or restart) the broker and wait until it answers."""
        subprocess.run(
            [str(KAFKA_LOCAL), "start"],
            env=self._env(),
            check=True,
            capture_output=True,
            timeout=180,
        )

    def stop(self) -> None:
        """Stop the broker (its data is kept)."""
        subprocess.run(
            [str(KAFKA_LOCAL), "stop"], env=self._env(), check=True, capture_output=True, timeout=60
        )


@pytest.fixture(name="quiet_logs", scope="session", autouse=True)
def fixture_quiet_logs() -> Iterator[None]:
    """structlog as the daemon configures it (every processor runs, at debug level), but
    each rendered line is returned to the caller instead of printed: nothing reaches the
    captured stdout. Tests that check log events use ``structlog.testing.capture_logs``."""
    configure("debug", "json")
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.reset_defaults()


@pytest.fixture(name="kafka", scope="session")
def fixture_kafka() -> Iterator[Broker]:
    """A real single-node KRaft broker: ``KAFKA_BOOTSTRAP`` if set, else one we start."""
    existing = os.environ.get("KAFKA_BOOTSTRAP")
    if existing:
        yield Broker(existing, None, None)
        return
    home = Path(tempfile.mkdtemp(prefix="shipper-kafka-"))
    port = free_port()
    broker = Broker(f"127.0.0.1:{port}", home, port)
    try:
        broker.start()
        yield broker
    finally:
        subprocess.run(
            [str(KAFKA_LOCAL), "stop", "--purge"],
            env=broker._env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(name="topic")
def fixture_topic() -> str:
    """A fresh topic name (auto-created with one partition on first produce)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves new non-daemon threads running (as watchdog's suite does)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    assert not leaked, f"threads leaked: {leaked}"
