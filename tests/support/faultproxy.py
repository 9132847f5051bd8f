"""A TCP proxy to one fixed target whose network faults the tests switch on and off at run time.

Every connection accepted on ``port`` is forwarded to ``target``. ``set_mode`` decides what
happens to the bytes, for connections already open and for new ones alike:

``forward``
    Bytes flow both ways unchanged (the default).
``blackhole``
    Nothing is read or written in either direction: the path is frozen. Connections stay
    open and a client's writes fill the kernel buffers; new connections are accepted, then
    ignored. Back in ``forward``, every byte held up is delivered, in order.
``discard``
    Everything a client sends is read and thrown away (``bytes_discarded``); nothing reaches
    the target and nothing comes back: a peer that takes bytes and never answers. A
    connection that lost bytes no longer carries a consistent byte stream, so it is reset
    (RST) when forwarding resumes instead of going on with a hole in it; connections that
    lost nothing resume normally.
``refuse``
    New connections are reset (RST) as soon as they are accepted: the client gets
    ``ECONNRESET`` from ``connect`` or its first read, not ``ECONNREFUSED``. Open connections
    keep the behaviour of the mode before; ``reset_all`` breaks them too.

``reset_all`` resets every open connection now, ``reset_every`` does it on a period. A
connection opens its own connection to the target the first time it forwards, so a frozen
or discarding path sends the target nothing, not even a SYN. When the target cannot be
reached, the client's connection is reset at once.

One daemon thread runs a selector over all sockets and owns them; a frozen proxy uses no CPU.
The control methods hand their work to that thread and wait for it to be done.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FaultProxy", "Mode", "ProxyStats"]

_T = TypeVar("_T")

#: Bytes asked of one ``recv``.
_CHUNK = 64 * 1024
#: Bytes held per direction before the proxy stops reading that side (backpressure).
_HELD = 256 * 1024
#: ``SO_LINGER`` on with a zero timeout: ``close`` then sends RST instead of FIN.
_LINGER_RST = struct.pack("ii", 1, 0)

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Mode(enum.StrEnum):
    """What the proxy does with connections and their bytes."""

    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    DISCARD = "discard"
    REFUSE = "refuse"


@dataclass(frozen=True)
class ProxyStats:
    """The proxy's counters since it was made, taken at one instant."""

    #: Bytes written to the target (client to target).
    bytes_forwarded: int
    #: Bytes written to clients (target to client).
    bytes_returned: int
    #: Bytes read from clients in ``discard`` mode and thrown away.
    bytes_discarded: int
    #: Connections accepted, by the mode in force when each was accepted.
    accepted_by_mode: Mapping[Mode, int]
    #: Open connections reset by ``reset_all``, ``reset_every`` or by leaving ``discard``.
    reset: int
    #: Client connections reset because the target could not be reached.
    unreachable: int
    #: Connections open now.
    live: int

    @property
    def accepted(self) -> int:
        """Connections accepted in any mode, the refused ones included."""
        return sum(self.accepted_by_mode.values())

    @property
    def refused(self) -> int:
        """Connections reset as soon as they were accepted, in ``refuse`` mode."""
        return self.accepted_by_mode[Mode.REFUSE]


class _Conn:
    """One client connection, its connection to the target, and the bytes between them."""

    __slots__ = (
        "client",
        "client_eof",
        "client_shut",
        "closed",
        "connecting",
        "discarded",
        "down",
        "events",
        "target",
        "target_eof",
        "target_shut",
        "up",
    )

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.target: socket.socket | None = None
        self.connecting = False
        self.up = bytearray()  # read from the client, not yet written to the target
        self.down = bytearray()  # read from the target, not yet written to the client
        self.client_eof = False  # the client shut its sending side
        self.target_eof = False  # the target shut its sending side
        self.client_shut = False  # we shut our sending side towards the client
        self.target_shut = False  # we shut our sending side towards the target
        self.discarded = 0
        self.events: dict[socket.socket, int] = {}  # what the selector watches per socket
        self.closed = False


def _resolve(address: tuple[str, int]) -> tuple[socket.AddressFamily, Any]:
    """The family and socket address of ``(host, port)``, resolved once, up front."""
    family, _, _, _, sockaddr = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0]
    return family, sockaddr


def _close(sock: socket.socket, *, rst: bool) -> None:
    """Close ``sock``, with RST instead of FIN when ``rst`` is set."""
    if rst:
        # Already reset by the peer: then closing is all that is left to do.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def _no_delay(sock: socket.socket) -> None:
    """Send small writes at once: the proxy must not add latency of its own."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class FaultProxy:
    """Forwards TCP connections from ``port`` to ``target`` and injects faults on demand."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self._target_family, self._target_addr = _resolve(target)
        family, addr = _resolve(listen)
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(addr)
            self._listener.listen(128)
            self._listener.setblocking(False)
        except OSError:
            self._listener.close()
            raise
        #: The address clients connect to. It listens from here on (so a broker can be told
        #: to advertise it first); connections wait in the backlog until ``start``.
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, _READ)
        self._selector.register(self._wake_r, _READ)

        # Owned by the proxy's thread; by the caller, under the lock, while it is not running.
        self._mode = Mode.FORWARD
        self._flow = Mode.FORWARD  # what open connections do: forward, blackhole or discard
        self._conns: set[_Conn] = set()
        self._period: float | None = None
        self._next_reset: float | None = None

        self._forwarded = 0
        self._returned = 0
        self._discarded = 0
        self._accepted = dict.fromkeys(Mode, 0)
        self._reset = 0
        self._unreachable = 0

        self._lock = threading.Lock()  # guards the fields below
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._closed = False

    # -- control (any thread) --------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        """The mode set last."""
        return self._mode

    def start(self) -> None:
        """Start serving connections on the proxy's thread."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the proxy is closed")
            if self._thread is not None:
                raise RuntimeError("the proxy is already started")
            self._thread = threading.Thread(
                target=self._run, name=f"faultproxy-{self.port}", daemon=True
            )
            self._running = True
            self._thread.start()

    def close(self) -> None:
        """Stop listening, close every connection and join the proxy's thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            thread = self._thread
            self._wake()
        if thread is not None:
            thread.join()
        with self._lock:
            for conn in list(self._conns):
                self._drop(conn, rst=False)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def set_mode(self, mode: Mode | str) -> None:
        """Switch to ``mode`` for open and new connections (see the module's docstring)."""
        new = Mode(mode)
        self._call(lambda: self._set_mode(new))

    def reset_all(self) -> int:
        """Reset (RST) every open connection now and return how many there were."""
        return self._call(self._reset_all)

    def reset_every(self, seconds: float | None) -> None:
        """Reset every open connection each ``seconds`` from now on; ``None`` stops it."""
        if seconds is not None and seconds <= 0:
            raise ValueError("the reset period must be positive")
        self._call(lambda: self._set_period(seconds))

    def stats(self) -> ProxyStats:
        """The counters as they are now."""
        return self._call(self._snapshot)

    def __enter__(self) -> FaultProxy:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the proxy's thread and return its result (inline when not running)."""
        with self._lock:
            if not self._running or threading.current_thread() is self._thread:
                return fn()
            future: Future[_T] = Future()
            self._calls.append((fn, future))
            self._wake()
        return future.result()

    def _wake(self) -> None:
        """Make the proxy's thread return from ``select``."""
        with contextlib.suppress(BlockingIOError):  # full: the thread has a wake-up pending
            self._wake_w.send(b"\0")

    # -- the proxy's thread ----------------------------------------------------------------

    def _run(self) -> None:
        """Serve events until ``close``; leftover calls then run inline, under the lock."""
        try:
            while not self._stopping:
                self._turn()
        finally:
            with self._lock:
                self._running = False
                while self._calls:
                    self._run_call(*self._calls.popleft())

    def _turn(self) -> None:
        """Wait for the next events, serve them, then run queued calls and due resets."""
        timeout = None
        if self._next_reset is not None:
            timeout = max(0.0, self._next_reset - time.monotonic())
        for key, mask in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                self._drain_wake()
            else:
                self._serve(key.data, key.fileobj is key.data.client, mask)
        while True:
            with self._lock:
                if not self._calls:
                    break
                fn, future = self._calls.popleft()
            self._run_call(fn, future)
        if self._period is not None and self._next_reset is not None:
            now = time.monotonic()
            if now >= self._next_reset:
                self._reset_all()
                self._next_reset = now + self._period

    @staticmethod
    def _run_call(fn: Callable[[], Any], future: Future[Any]) -> None:
        """Run one queued call and hand its result or exception to the waiting caller."""
        try:
            future.set_result(fn())
        except BaseException as exc:  # the caller re-raises it from future.result()
            future.set_exception(exc)

    def _drain_wake(self) -> None:
        """Empty the wake-up pipe; the queued calls run after this round of events."""
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self) -> None:
        """Accept every pending connection and treat it as the current mode says."""
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # the client gave up while queued
                continue
            except OSError:  # out of descriptors: the connection waits in the backlog
                return
            self._accepted[self._mode] += 1
            if self._mode is Mode.REFUSE:
                _close(sock, rst=True)
                continue
            sock.setblocking(False)
            _no_delay(sock)
            conn = _Conn(sock)
            self._conns.add(conn)
            self._guarded(conn, self._settle)

    def _serve(self, conn: _Conn, client_side: bool, mask: int) -> None:
        """Move the bytes one socket of ``conn`` is ready for."""
        if conn.closed:  # dropped earlier in the same round of events
            return
        if client_side:
            self._guarded(conn, lambda c: self._serve_client(c, mask))
        else:
            self._guarded(conn, lambda c: self._serve_target(c, mask))
        if not conn.closed:
            self._guarded(conn, self._settle)

    def _guarded(self, conn: _Conn, step: Callable[[_Conn], None]) -> None:
        """Run ``step``; a socket error on either side breaks both (RST to the client)."""
        try:
            step(conn)
        except (BlockingIOError, InterruptedError):  # not ready after all: wait for the next event
            pass
        except OSError:
            self._drop(conn, rst=True)

    def _serve_client(self, conn: _Conn, mask: int) -> None:
        """Read from the client (to keep or to throw away) and write it what the target said."""
        if mask & _READ:
            data = conn.client.recv(_CHUNK)
            if self._flow is Mode.DISCARD:
                if not data:  # the client hung up on the silent peer
                    self._drop(conn, rst=False)
                    return
                conn.discarded += len(data)
                self._discarded += len(data)
            elif data:
                conn.up += data
            else:
                conn.client_eof = True
        if mask & _WRITE and conn.down:
            sent = conn.client.send(conn.down)
            del conn.down[:sent]
            self._returned += sent

    def _serve_target(self, conn: _Conn, mask: int) -> None:
        """Finish connecting to the target, or read its answers and write it the client's bytes."""
        assert conn.target is not None
        if conn.connecting:
            if conn.target.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._unreachable += 1
                self._drop(conn, rst=True)
                return
            conn.connecting = False
            _no_delay(conn.target)
            return
        if mask & _READ:
            data = conn.target.recv(_CHUNK)
            if data:
                conn.down += data
            else:
                conn.target_eof = True
        if mask & _WRITE and conn.up:
            sent = conn.target.send(conn.up)
            del conn.up[:sent]
            self._forwarded += sent

    def _connect(self, conn: _Conn) -> None:
        """Start connecting ``conn`` to the target without waiting for it."""
        target = socket.socket(self._target_family, socket.SOCK_STREAM)
        conn.target = target
        target.setblocking(False)
        err = target.connect_ex(self._target_addr)
        if err not in (0, errno.EINPROGRESS):
            self._unreachable += 1
            self._drop(conn, rst=True)
            return
        conn.connecting = err != 0

    def _settle(self, conn: _Conn) -> None:
        """Pass on half-closes, close a finished connection, and watch what the mode needs."""
        client_events = target_events = 0
        if self._flow is Mode.FORWARD:
            if conn.target is None:
                self._connect(conn)
                if conn.closed:
                    return
            assert conn.target is not None
            if conn.connecting:
                target_events = _WRITE
            else:
                if conn.client_eof and not conn.up and not conn.target_shut:
                    conn.target.shutdown(socket.SHUT_WR)
                    conn.target_shut = True
                if conn.target_eof and not conn.down and not conn.client_shut:
                    conn.client.shutdown(socket.SHUT_WR)
                    conn.client_shut = True
                if conn.client_shut and conn.target_shut:
                    self._drop(conn, rst=False)
                    return
                if not conn.target_eof and len(conn.down) < _HELD:
                    target_events |= _READ
                if conn.up:
                    target_events |= _WRITE
            if not conn.client_eof and len(conn.up) < _HELD:
                client_events |= _READ
            if conn.down:
                client_events |= _WRITE
        elif self._flow is Mode.DISCARD and not conn.client_eof:
            client_events = _READ
        self._watch(conn, conn.client, client_events)
        if conn.target is not None:
            self._watch(conn, conn.target, target_events)

    def _watch(self, conn: _Conn, sock: socket.socket, events: int) -> None:
        """Make the selector watch ``sock`` for ``events`` (none: not at all)."""
        old = conn.events.get(sock, 0)
        if events == old:
            return
        if not events:
            self._selector.unregister(sock)
        elif not old:
            self._selector.register(sock, events, conn)
        else:
            self._selector.modify(sock, events, conn)
        conn.events[sock] = events

    def _drop(self, conn: _Conn, *, rst: bool) -> None:
        """Close both sides of ``conn`` (RST when ``rst``) and forget it."""
        conn.closed = True
        self._conns.discard(conn)
        for sock in (conn.client, conn.target):
            if sock is None:
                continue
            if conn.events.get(sock):
                self._selector.unregister(sock)
            _close(sock, rst=rst)
        conn.events.clear()

    def _set_mode(self, mode: Mode) -> None:
        self._mode = mode
        if mode is Mode.REFUSE:
            return
        self._flow = mode
        if mode is Mode.FORWARD:
            for conn in [c for c in self._conns if c.discarded]:
                self._drop(conn, rst=True)
                self._reset += 1
        for conn in list(self._conns):
            self._guarded(conn, self._settle)

    def _reset_all(self) -> int:
        count = len(self._conns)
        for conn in list(self._conns):
            self._drop(conn, rst=True)
        self._reset += count
        return count

    def _set_period(self, seconds: float | None) -> None:
        self._period = seconds
        self._next_reset = None if seconds is None else time.monotonic() + seconds

    def _snapshot(self) -> ProxyStats:
        return ProxyStats(
            bytes_forwarded=self._forwarded,
            bytes_returned=self._returned,
            bytes_discarded=self._discarded,
            accepted_by_mode=dict(self._accepted),
            reset=self._reset,
            unreachable=self._unreachable,
            live=len(self._conns),
        )
