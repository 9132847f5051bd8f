"""No CPU without work: an idle shipper sleeps whatever Kafka's state (a busy-loop check with
a generous bound, not a benchmark)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Broker, free_port
from tests.integration.conftest import Shipper, Start, append, base_config

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


#: The bound: 2% of one core, averaged over the window (a busy loop costs ~100%).
MAX_SHARE = 0.02
WINDOW = 10.0
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of every thread of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def idle_share(s: Shipper, polls: int = 20, rescans: int = 2) -> float:
    """The share of one core ``s`` uses over WINDOW seconds, once its tailer has done
    ``polls`` more polls and ``rescans`` more rescans (start-up work is not idling)."""
    s.rounds(polls=polls, rescans=rescans)
    c0, t0 = cpu_seconds(s.proc.pid), time.monotonic()
    time.sleep(WINDOW)  # the measurement window itself
    return (cpu_seconds(s.proc.pid) - c0) / (time.monotonic() - t0)


@pytest.fixture(name="empty_log")
def fixture_empty_log(tmp_path: Path) -> Path:
    """An empty log file, as in a pod whose app has logged nothing yet."""
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    log.touch()
    return log


@pytest.fixture(name="frozen")
def fixture_frozen(kafka: Broker) -> Iterator[Callable[[], None]]:
    """A function that SIGSTOPs the session's broker; it is always continued afterwards."""
    if not kafka.managed or kafka.home is None:
        pytest.skip("needs a broker this session started (KAFKA_BOOTSTRAP is external)")
    pid = int((kafka.home / "kafka.pid").read_text())
    stopped: list[int] = []

    def freeze() -> None:
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    yield freeze
    for p in stopped:
        os.kill(p, signal.SIGCONT)


def test_idle_before_the_topic_has_a_record(
    kafka: Broker, topic: str, tmp_path: Path, empty_log: Path, start_shipper: Start
) -> None:
    """An empty log and a topic nobody has written: the shipper sleeps."""
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(empty_log)]))
    share = idle_share(s)
    assert share < MAX_SHARE, f"{share:.1%} of a core at idle"
    assert s.stop() == 0


def test_idle_after_a_line_was_shipped(
    kafka: Broker, topic: str, tmp_path: Path, empty_log: Path, start_shipper: Start
) -> None:
    """After shipping a line, with nothing more to read: the shipper sleeps."""
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(empty_log)]))
    append(empty_log, [b"one line"])
    s.wait_for(lambda led: led["sent"] == 1, 30, "the line shipped")
    share = idle_share(s)
    assert share < MAX_SHARE, f"{share:.1%} of a core at idle"
    assert s.stop() == 0


def test_idle_with_the_broker_unreachable(
    kafka: Broker, topic: str, tmp_path: Path, empty_log: Path, start_shipper: Start
) -> None:
    """No broker at the bootstrap address: reconnecting costs (almost) nothing."""
    cfg = base_config(kafka, topic, tmp_path, [str(empty_log)])
    cfg["kafka"]["bootstrap_servers"] = [f"127.0.0.1:{free_port()}"]
    s = start_shipper(cfg)
    share = idle_share(s)
    assert share < MAX_SHARE, f"{share:.1%} of a core at idle"
    assert s.stop() == 0


def test_idle_with_the_broker_frozen(  # noqa: PLR0917  # pytest passes fixtures by position
    kafka: Broker,
    topic: str,
    tmp_path: Path,
    empty_log: Path,
    start_shipper: Start,
    frozen: Callable[[], None],
) -> None:
    """A broker that stopped answering (SIGSTOP): waiting for it costs (almost) nothing."""
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(empty_log)]))
    append(empty_log, [b"before the freeze"])
    s.wait_for(lambda led: led["sent"] == 1, 30, "the line shipped")
    frozen()
    share = idle_share(s, polls=10, rescans=0)
    assert share < MAX_SHARE, f"{share:.1%} of a core at idle"
    assert s.stop() == 0
