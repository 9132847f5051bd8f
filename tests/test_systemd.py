"""sd_notify: messages reach the socket systemd names, and nothing happens without one."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.systemd import notify


@pytest.fixture(name="listener")
def fixture_listener() -> Iterator[tuple[socket.socket, str]]:
    """A unix datagram socket bound in the abstract namespace, and its NOTIFY_SOCKET value."""
    name = f"shipper-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def test_without_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside systemd (no NOTIFY_SOCKET) ``notify`` does nothing and says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_abstract_socket(
    monkeypatch: pytest.MonkeyPatch, listener: tuple[socket.socket, str]
) -> None:
    """An ``@`` address is the abstract namespace; each state is one datagram."""
    sock, address = listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert notify("READY=1") is True
    assert notify("STATUS=reading 3 files") is True
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"STATUS=reading 3 files"


def test_path_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A path address is a socket file, as systemd usually gives."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_nobody_listening(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A socket that is gone is not an error for the daemon: ``notify`` returns False."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert notify("READY=1") is False
