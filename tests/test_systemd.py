"""sd_notify: the watchdog interval systemd asks for, and messages on its socket."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from shipper.systemd import notify, watchdog_interval


@pytest.mark.parametrize(
    ("usec", "pid", "expect"),
    [
        ("30000000", None, 30.0),
        ("400000", "self", 0.4),
        ("400000", "1", None),  # meant for another process
        ("0", None, None),
        ("", None, None),
        ("x", None, None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str, pid: str | None, expect: float | None
) -> None:
    """WATCHDOG_USEC gives the interval, for this process only (WATCHDOG_PID)."""
    monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is None:
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()) if pid == "self" else pid)
    assert watchdog_interval() == expect


def test_notify_sends_to_the_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A message reaches NOTIFY_SOCKET; without one, or with a dead one, notify is False."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("WATCHDOG=1")
        assert sock.recv(100) == b"WATCHDOG=1"
    assert not notify("WATCHDOG=1")  # nobody listens any more
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")
