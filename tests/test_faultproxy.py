"""The fault proxy: every mode, checked against an echo server, and nothing left behind."""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.faultproxy import FaultProxy, Mode
from tests.support.wait import wait_until

Connect = Callable[..., socket.socket]

MIB = 1024 * 1024


class EchoServer:
    """A TCP server that sends every byte back on its connection, one thread per client."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._received = 0
        self._accepter = threading.Thread(target=self._accept, name="echo-accept", daemon=True)
        self._accepter.start()

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self._conns)

    @property
    def received(self) -> int:
        """Bytes received so far, over all connections."""
        with self._lock:
            return self._received

    def _accept(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            with self._lock:
                if self._closing:  # the wake-up connection from close()
                    conn.close()
                    return
                self._conns.append(conn)
                thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(64 * 1024):
                with self._lock:
                    self._received += len(data)
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:  # hung up on, or the server is closing
            pass

    def hang_up(self) -> None:
        """Shut every connection in both directions, as a server going away does."""
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):  # the client is gone already
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop accepting, end every connection and join every thread."""
        with self._lock:
            self._closing = True
        socket.create_connection(self.address, timeout=5).close()  # wakes accept()
        self._accepter.join()
        self.hang_up()
        for thread in self._threads:
            thread.join()
        for conn in self._conns:
            conn.close()
        self._listener.close()


@pytest.fixture(name="echo")
def fixture_echo() -> Iterator[EchoServer]:
    """An echo server, the proxy's target."""
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture(name="proxy")
def fixture_proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    """A started proxy in front of the echo server."""
    with FaultProxy(echo.address) as proxy:
        yield proxy


@pytest.fixture(name="connect")
def fixture_connect(proxy: FaultProxy) -> Iterator[Connect]:
    """Open client connections (to the proxy unless told a port); all closed at the end."""
    socks: list[socket.socket] = []

    def connect(port: int | None = None) -> socket.socket:
        sock = socket.socket()
        socks.append(sock)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port or proxy.port))
        return sock

    yield connect
    for sock in socks:
        sock.close()


def exchange(
    sock: socket.socket, data: bytes, expect: int | None = None, timeout: float = 10.0
) -> bytes:
    """Send ``data`` while reading ``expect`` bytes back (default: as many as sent)."""
    expect = len(data) if expect is None else expect
    view = memoryview(data)
    sent = 0
    got = bytearray()
    deadline = time.monotonic() + timeout
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(got) < expect:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(got)} of {expect} bytes in time"
            for _, mask in sel.select(left):
                if mask & selectors.EVENT_READ:
                    chunk = sock.recv(64 * 1024)
                    assert chunk, f"connection closed after {len(got)} of {expect} bytes"
                    got += chunk
                if mask & selectors.EVENT_WRITE:
                    sent += sock.send(view[sent : sent + 64 * 1024])
                    if sent == len(data):
                        sel.modify(sock, selectors.EVENT_READ)
    sock.settimeout(5)
    return bytes(got)


def push_until_blocked(sock: socket.socket, data: bytes, stall: float = 0.3) -> int:
    """Send ``data`` until the socket stays unwritable for ``stall`` s; return bytes sent."""
    view = memoryview(data)
    sent = 0
    sock.setblocking(False)
    while sent < len(data):
        try:
            sent += sock.send(view[sent : sent + 64 * 1024])
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], stall)
            if not writable:
                break
    sock.settimeout(5)
    return sent


def assert_reset(sock: socket.socket) -> None:
    """The peer resets ``sock`` (now or within a few seconds)."""
    sock.settimeout(5)
    with pytest.raises(ConnectionResetError):
        sock.recv(1)


def first_recv(connect: Connect, port: int | None = None) -> bytes:
    """Connect and read one byte: what a client that is reset on arrival sees first."""
    sock = connect(port)
    sock.settimeout(5)
    return sock.recv(1)


def assert_silent(sock: socket.socket, wait: float = 0.3) -> None:
    """Nothing arrives on ``sock`` for ``wait`` seconds, and it is not closed either."""
    sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(5)


def cpu_ticks(thread: threading.Thread) -> int:
    """User plus system CPU time of ``thread`` so far, in clock ticks (Linux only)."""
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat


def proxy_thread(proxy: FaultProxy) -> threading.Thread:
    """The proxy's own thread."""
    (thread,) = [t for t in threading.enumerate() if t.name == f"faultproxy-{proxy.port}"]
    return thread


def test_forward_round_trips_megabytes_in_order(proxy: FaultProxy, connect: Connect) -> None:
    """forward carries megabytes both ways unchanged and in order, and counts them."""
    data = os.urandom(4 * MIB)
    assert exchange(connect(), data) == data
    stats = proxy.stats()
    assert (stats.bytes_forwarded, stats.bytes_returned) == (len(data), len(data))
    assert stats.accepted_by_mode[Mode.FORWARD] == 1
    assert stats.bytes_discarded == 0


def test_forward_serves_many_connections_at_once(proxy: FaultProxy, connect: Connect) -> None:
    """Twenty interleaved connections each get back exactly their own bytes."""
    clients = [connect() for _ in range(20)]
    messages = [b"%02d:" % i * 500 for i in range(len(clients))]
    for client, message in zip(clients, messages, strict=True):
        client.sendall(message)
    for client, message in zip(clients, messages, strict=True):
        assert exchange(client, b"", expect=len(message)) == message
    assert proxy.stats().live == 20


def test_half_close_passes_through_both_ways(proxy: FaultProxy, connect: Connect) -> None:
    """A client's FIN reaches the target, the target's answer and FIN come back, all closes."""
    client = connect()
    client.sendall(b"last words")
    client.shutdown(socket.SHUT_WR)
    got = bytearray()
    while chunk := client.recv(1024):
        got += chunk
    assert got == b"last words"
    wait_until(lambda: proxy.stats().live == 0, 5, "no live connections", 0.005)


def test_target_hanging_up_reaches_the_client(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    """When the target closes its connection, the client sees the end of the stream."""
    client = connect()
    assert exchange(client, b"hi") == b"hi"
    echo.hang_up()
    assert client.recv(1) == b""
    client.close()
    wait_until(lambda: proxy.stats().live == 0, 5, "no live connections", 0.005)


def test_unreachable_target_resets_the_client(connect: Connect) -> None:
    """With nothing listening at the target, a client is reset as soon as it connects."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()
    with FaultProxy(closed) as proxy:
        with pytest.raises(ConnectionResetError):
            first_recv(connect, proxy.port)
        assert proxy.stats().unreachable == 1


def test_blackhole_freezes_and_forward_delivers_everything_in_order(
    proxy: FaultProxy, connect: Connect
) -> None:
    """blackhole stops bytes both ways (and the proxy idles); forward then delivers them all."""
    client = connect()
    assert exchange(client, b"hello") == b"hello"
    proxy.set_mode("blackhole")
    ticks = cpu_ticks(proxy_thread(proxy))
    client.sendall(b"ping")
    assert_silent(client)
    data = os.urandom(16 * MIB)
    pushed = push_until_blocked(client, data)
    assert 0 < pushed < len(data), "a frozen path must stop taking bytes"
    assert cpu_ticks(proxy_thread(proxy)) - ticks <= 5, "a blackholed proxy must not spin"
    proxy.set_mode(Mode.FORWARD)
    assert exchange(client, data[pushed:], expect=4 + len(data)) == b"ping" + data
    assert proxy.stats().bytes_forwarded == len(b"hello" + b"ping" + data)


def test_blackhole_accepts_new_connections_and_answers_nothing(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    """A connection made while blackholed gets no answer, and its target is not even dialled."""
    proxy.set_mode("blackhole")
    client = connect()
    client.sendall(b"anyone?")
    assert_silent(client)
    assert proxy.stats().accepted_by_mode[Mode.BLACKHOLE] == 1
    assert echo.connections == 0
    proxy.set_mode("forward")
    assert exchange(client, b"", expect=7) == b"anyone?"


def test_discard_reads_and_counts_everything_and_never_answers(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    """discard takes every byte a client sends, counts it, and forwards and answers nothing."""
    proxy.set_mode("discard")
    client = connect()
    client.sendall(os.urandom(2 * MIB))
    wait_until(lambda: proxy.stats().bytes_discarded == 2 * MIB, 5, "2 MiB discarded", 0.005)
    assert_silent(client)
    assert (echo.connections, echo.received) == (0, 0)
    assert proxy.stats().bytes_forwarded == 0


def test_forward_after_discard_resets_only_connections_that_lost_bytes(
    proxy: FaultProxy, connect: Connect
) -> None:
    """Leaving discard resets the connections that lost bytes; the others carry on."""
    lossy, intact = connect(), connect()
    assert exchange(lossy, b"a") == b"a"
    assert exchange(intact, b"b") == b"b"
    proxy.set_mode("discard")
    lossy.sendall(b"lost")
    wait_until(lambda: proxy.stats().bytes_discarded == 4, 5, "4 bytes discarded", 0.005)
    proxy.set_mode("forward")
    assert_reset(lossy)
    assert exchange(intact, b"still here") == b"still here"
    assert proxy.stats().reset == 1


def test_refuse_resets_new_connections_and_keeps_open_ones(
    proxy: FaultProxy, connect: Connect
) -> None:
    """refuse resets each new connection at once; connections already open keep working."""
    kept = connect()
    assert exchange(kept, b"x") == b"x"
    proxy.set_mode("refuse")
    with pytest.raises(ConnectionResetError):
        first_recv(connect)
    assert exchange(kept, b"y") == b"y"
    proxy.set_mode("forward")
    assert exchange(connect(), b"z") == b"z"
    stats = proxy.stats()
    assert (stats.refused, stats.accepted) == (1, 3)


def test_reset_all_resets_every_open_connection(proxy: FaultProxy, connect: Connect) -> None:
    """reset_all sends RST on every open connection and says how many there were."""
    clients = [connect() for _ in range(3)]
    for client in clients:
        assert exchange(client, b"up") == b"up"
    assert proxy.reset_all() == 3
    for client in clients:
        assert_reset(client)
    stats = proxy.stats()
    assert (stats.reset, stats.live) == (3, 0)
    assert exchange(connect(), b"again") == b"again"


def test_reset_every_resets_on_a_period_until_stopped(proxy: FaultProxy, connect: Connect) -> None:
    """reset_every keeps resetting new connections; None stops it."""
    proxy.reset_every(0.05)
    for _ in range(3):
        with pytest.raises(ConnectionResetError):
            first_recv(connect)
    assert proxy.stats().reset >= 3
    proxy.reset_every(None)
    client = connect()
    assert exchange(client, b"calm") == b"calm"
    assert_silent(client)


def test_set_mode_rejects_unknown_modes(proxy: FaultProxy) -> None:
    """An unknown mode is an error and leaves the mode as it was."""
    with pytest.raises(ValueError, match="sideways"):
        proxy.set_mode("sideways")
    assert proxy.mode is Mode.FORWARD


def test_close_ends_connections_and_leaves_no_thread(echo: EchoServer) -> None:
    """close ends every connection and joins the proxy's thread; closing twice is harmless."""
    proxy = FaultProxy(echo.address)
    proxy.start()
    thread = proxy_thread(proxy)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
        assert exchange(client, b"bye") == b"bye"
        proxy.close()
        assert not thread.is_alive()
        assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]
        assert client.recv(1) == b""
    proxy.close()
    with pytest.raises(RuntimeError):
        proxy.start()
