"""The daemon under a systemd-like supervisor: READY, WATCHDOG only while every worker thread
is alive, RELOADING/READY around a reload, STOPPING; read from a real notify socket."""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.conftest import Start, append, base_config
from tests.integration.test_tailing import audit, numbered, topic_records
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


class NotifySocket(threading.Thread):
    """A datagram socket like systemd's NOTIFY_SOCKET, recording (time, message)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="notify-socket", daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.got: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.got.append((time.monotonic(), data.decode()))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.got) if m == message]

    def close(self) -> None:
        self.halt.set()
        self.join(5)
        self.sock.close()


@pytest.fixture(name="notify")
def fixture_notify(tmp_path: Path) -> Iterator[NotifySocket]:
    """A notify socket listening for the test."""
    n = NotifySocket(tmp_path / "notify.sock")
    n.start()
    yield n
    n.close()


def test_watchdog_is_fed_only_while_every_thread_lives(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, notify: NotifySocket
) -> None:
    """READY=1 once running; WATCHDOG=1 well within WATCHDOG_USEC while all is well; none
    while the sender thread is dead (until its stage is rebuilt), then again;
    RELOADING=1 then READY=1 on SIGHUP; STOPPING=1 on SIGTERM."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    env = {
        "NOTIFY_SOCKET": str(notify.path),
        "WATCHDOG_USEC": "400000",
        "SHIPPER_TEST_FAULTS": "shipper-sender",
    }
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(logs / "*.log")]), env=env)
    wait_until(lambda: notify.times("READY=1"), 10, "READY=1")
    wait_until(lambda: len(notify.times("WATCHDOG=1")) >= 10, 10, "WATCHDOG=1 pings")
    pings = notify.times("WATCHDOG=1")
    assert max(b - a for a, b in itertools.pairwise(pings)) < 0.4
    append(log, [numbered(b"w", i) for i in range(10)])
    s.wait_for(lambda led: led["sent"] == 10, 30, "lines before the fault")
    broken = time.monotonic()
    s.proc.send_signal(signal.SIGUSR2)
    wait_until(
        lambda: [e for e in s.events() if e.get("event") == "stage_restarted"], 30, "restart"
    )
    restarted = time.monotonic()
    wait_until(
        lambda: [t for t in notify.times("WATCHDOG=1") if t > restarted], 10, "pings resumed"
    )
    around = [t for t in notify.times("WATCHDOG=1") if broken - 0.5 < t < restarted + 0.5]
    gaps = [b - a for a, b in itertools.pairwise(around)]
    assert gaps, around
    assert max(gaps) >= 0.8, "the watchdog was fed while a thread was dead"
    s.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: [m for _, m in notify.got if m.startswith("RELOADING=1\nMONOTONIC_USEC=")],
        30,
        "RELOADING=1",
    )
    wait_until(lambda: len(notify.times("READY=1")) == 2, 30, "READY=1 after the reload")
    append(log, [numbered(b"w", i) for i in range(10, 20)])
    s.wait_for(lambda led: led["sent"] == 20, 30, "lines after the reload")
    assert s.stop() == 0
    assert notify.times("STOPPING=1")
    a = audit(topic_records(kafka, topic, 20), b"w", 20)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
