"""Drain the queue into Kafka as pre-encoded record batches in acks=0 ProduceRequests."""

from __future__ import annotations

import contextlib
import enum
import fcntl
import socket
import struct
import termios
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any, Final

import kafka.errors as kerr
from kafka.net.manager import KafkaConnectionManager
from kafka.net.selector import NetworkSelector
from kafka.protocol.producer import ProduceRequest
from kafka.structs import TopicPartition

from shipper.errors import ConfigError
from shipper.kafka.encode import (
    HEADER_SIZE,
    batch_size,
    compression_code,
    encode_batch,
    split_batches,
)
from shipper.log import RateLimiter

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from shipper.config import KafkaConfig
    from shipper.ledger import Ledger
    from shipper.queue import DropQueue

__all__ = ["KafkaSender"]

_IDLE_WAIT: Final = 0.25  # take() timeout while the queue is empty (stop() wakes it early)
_TICK: Final = 0.25  # IO-thread housekeeping period: connect leaders, track connectivity
_RECHECK_ROOM: Final = 0.001  # a waiting batch re-checks a full connection this often
_RECHECK_CONN: Final = 0.01  # ... and a missing connection this often
_GRACE: Final = 2.0  # extra wait for the IO thread's verdict before abandoning a batch
_CRASH_BACKOFF: Final = 1.0
_WARN_INTERVAL: Final = 10.0
_REQUEST_TIMEOUT_MS: Final = 30_000
# Produce v3..v9 name the topic; v13 wants topic ids. v9 is what kafka-python's producer uses.
_PRODUCE_MAX_VERSION: Final = 9
# Upper bound of per-record overhead (varints, attributes, key, header count) for take() sizing.
_RECORD_OVERHEAD: Final = 11


class _State(enum.Enum):
    WAITING = "waiting"  # in the IO thread's hands, not yet written to a connection
    SENT = "sent"  # written to a connection (counted as sent, never handed again)
    UNAVAILABLE = "unavailable"  # no ready leader connection within unavailable_timeout
    SHUTDOWN = "shutdown"  # still waiting when stop()'s deadline passed
    ABANDONED = "abandoned"  # the sender gave up waiting for the IO thread's verdict


class _Batch:
    """One encoded RecordBatch on its way to a connection; its state changes under a lock."""

    __slots__ = ("deadline", "done", "key", "lines", "nbytes", "payload", "state")

    def __init__(
        self, payload: bytes, lines: int, nbytes: int, deadline: float, key: int | None = None
    ) -> None:
        self.payload = payload
        self.key = key  # partition = key % partitions; None: round-robin
        self.lines = lines
        self.nbytes = nbytes
        self.deadline = deadline
        self.state = _State.WAITING
        self.done = threading.Event()


def _buffered(conn: Any) -> int:
    """Bytes a connection holds in user space (written to it, not yet to the socket)."""
    n = 0
    transport = conn.transport
    if transport is not None:
        # kafka-python 3.0 has no get_write_buffer_size(); its transport is a deque of chunks.
        n = sum(map(len, transport._write_buffer))
    parser = conn.parser
    if parser is not None and parser.bytes_to_send:
        n += sum(map(len, parser.bytes_to_send))
    return n


def _kernel_outq(conn: Any) -> int:
    """Bytes in the socket's kernel send queue (Linux TIOCOUTQ); 0 when unknown."""
    transport = conn.transport
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\x00\x00\x00\x00")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


class _Client:
    """kafka-python's selector + connection manager on their own IO thread, for one topic.

    Everything named ``_io_*`` runs on the IO thread; the rest is safe from any thread.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        log: FilteringBoundLogger,
        lock: threading.Lock,
        limiter: RateLimiter,
        stop_deadline: list[float],
    ) -> None:
        self._cfg = cfg
        self._topic = cfg.topic
        self._log = log
        self._lock = lock
        self._limiter = limiter
        self._stop_deadline = stop_deadline  # [monotonic deadline], inf until stop()
        self._max_in_flight = cfg.max_in_flight_bytes
        self._net: Any = NetworkSelector(client_id=cfg.client_id)
        self._manager: Any = KafkaConnectionManager(
            self._net,
            bootstrap_servers=list(cfg.bootstrap_servers),
            client_id=cfg.client_id,
            reconnect_backoff_ms=100,
            reconnect_backoff_max_ms=int(cfg.connect_backoff_max * 1000),
            request_timeout_ms=_REQUEST_TIMEOUT_MS,
            metadata_max_age_ms=int(cfg.metadata_refresh * 1000),
        )
        self._cluster: Any = self._manager.cluster
        self._routes: tuple[tuple[int, int], ...] = ()  # (partition, leader node id)
        self._nparts = 0  # partitions of the topic, with or without a leader
        self._rr = 0
        self.connected = False
        self._down_since = time.monotonic()
        self._closing = False
        self._last_nudge = 0.0

    # -- any thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the IO thread and, on it, metadata for the topic (which bootstraps)."""
        self._net.start()
        self._net.call_soon_threadsafe(self._io_start)

    @property
    def alive(self) -> bool:
        """False once the IO thread has died."""
        thread = self._net._io_thread
        return thread is not None and thread.is_alive() and self._net._exception is None

    def submit(self, batch: _Batch) -> None:
        """Hand ``batch`` to the IO thread, which writes it once or gives up at its deadline."""
        self._net.call_soon_threadsafe(lambda: self._io_deliver(batch))

    def pending_bytes(self) -> int:
        """Bytes written to connections but not yet acknowledged by the broker's TCP stack."""
        conns = list(self._manager._conns.values())
        return sum(_buffered(c) + _kernel_outq(c) for c in conns)

    def close(self, deadline: float) -> None:
        """Flush what connections hold until ``deadline``, then close them and the IO thread."""
        self._closing = True
        while self.alive and time.monotonic() < deadline:
            try:
                if not self.pending_bytes():
                    break
            except (RuntimeError, AttributeError, OSError):  # racing the IO thread; retry
                pass
            time.sleep(0.005)
        if self.alive:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._net.call_soon_threadsafe(self._manager.close)
            left = max(0.0, deadline - time.monotonic())
            self._net.stop(timeout_ms=max(100.0, left * 1000))
        try:
            # Past the deadline: sockets still flushing are aborted, not left to the GC.
            for conn in list(self._manager._conns.values()):
                if conn.transport is not None:
                    conn.transport.abort(kerr.KafkaConnectionError("shutdown"))
            self._net.close()
        except Exception as e:  # noqa: BLE001 - closing is best effort, but say so
            self._log.warning("kafka_close_error", error=repr(e))

    # -- IO thread ---------------------------------------------------------------------------
    def _io_start(self) -> None:
        self._cluster.add_listener(self._io_on_metadata)
        self._cluster.add_topic(self._topic)  # request_update -> refresh loop -> bootstrap
        self._net.call_soon(self._io_housekeeping)

    def _io_on_metadata(self, cluster: Any) -> None:
        parts = cluster.partitions_for_topic(self._topic) or ()
        routes = []
        for p in sorted(parts):
            leader = cluster.leader_for_partition(TopicPartition(self._topic, p))
            if leader is not None and leader >= 0:
                routes.append((p, leader))
        new = tuple(routes)
        self._nparts = len(parts)
        if new != self._routes:
            self._routes = new
            self._log.info(
                "kafka_metadata",
                topic=self._topic,
                partitions=len(parts),
                available=len(new),
                leaders=sorted({leader for _, leader in new}),
            )

    async def _io_housekeeping(self) -> None:
        while not self._closing:
            try:
                self._io_tick()
            except Exception:  # noqa: BLE001 - keep the IO loop alive, but loudly
                self._log.exception("kafka_housekeeping_error")
            await self._net.sleep(_TICK)

    def _io_tick(self) -> None:
        cluster = self._cluster
        fut = getattr(cluster, "_refresh_loop_future", None)
        if fut is not None and fut.is_done:
            # kafka-python never restarts a refresh loop that died (e.g. a bootstrap error).
            self._log.warning("kafka_metadata_loop_restart", error=repr(fut.exception))
            cluster._refresh_loop_future = None
            cluster.request_update()
        now = time.monotonic()
        if not self._routes and now - self._last_nudge >= 1.0:
            self._last_nudge = now  # no usable partition yet: ask again, at most once a second
            cluster.request_update()
        ready = False
        for leader in {leader for _, leader in self._routes}:
            conn = self._io_conn(leader)  # connects in the background when needed
            if conn is not None and conn.connected and not conn.paused:
                ready = True
        self._io_set_connected(ready)
        if not ready:
            down = time.monotonic() - self._down_since
            if down > 1.0:
                if not self._manager.bootstrapped:
                    reason = "bootstrap servers unreachable"
                elif not self._routes:
                    reason = "no leader for the topic"
                else:
                    reason = "leader connection not ready"
                self._warn(
                    "kafka_unavailable",
                    reason=reason,
                    down_for=round(down, 1),
                    bootstrap_servers=list(self._cfg.bootstrap_servers),
                    topic=self._topic,
                )

    def _io_set_connected(self, ready: bool) -> None:
        if ready == self.connected:
            return
        self.connected = ready
        if ready:
            self._log.info("kafka_connected", topic=self._topic, partitions=len(self._routes))
        else:
            self._down_since = time.monotonic()
            self._log.warning("kafka_disconnected", topic=self._topic)

    def _io_conn(self, node_id: int) -> Any:
        try:
            return self._manager.get_connection(node_id)
        except (kerr.NodeNotReadyError, kerr.UnknownBrokerIdError):
            return None  # backing off, or metadata is being refreshed
        except kerr.KafkaError as e:  # cached auth failures and the like
            self._warn("kafka_connect_error", node=node_id, error=repr(e))
            return None

    def _io_pick(self, size: int, key: int | None = None) -> tuple[Any, int, float]:
        """Return (connection, partition, 0) for the next ready partition, or (None, -1, wait).

        With a ``key``, only partition ``key % partitions`` will do (partition_by file/host).
        """
        routes = self._routes
        n = len(routes)
        wait = _RECHECK_CONN
        if key is not None:
            want = key % self._nparts if self._nparts else -1
            routes = tuple(r for r in routes if r[0] == want)
            n = len(routes)
        for k in range(n):
            i = (self._rr + k) % n
            partition, leader = routes[i]
            conn = self._io_conn(leader)
            if conn is None or not conn.connected or conn.paused or conn.transport is None:
                continue
            if conn.transport.is_closing():
                continue
            held = _buffered(conn)
            if held and held + size > self._max_in_flight:
                wait = _RECHECK_ROOM
                continue
            self._rr = i + 1
            return conn, partition, 0.0
        return None, -1, wait

    def _io_write(self, conn: Any, partition: int, batch: _Batch) -> bool:
        """Write ``batch`` to ``conn``; True once written (or possibly written)."""
        topic = ProduceRequest.TopicProduceData
        req = ProduceRequest(
            transactional_id=None,
            acks=0,
            timeout_ms=_REQUEST_TIMEOUT_MS,
            topic_data=[
                topic(
                    name=self._topic,
                    partition_data=[
                        topic.PartitionProduceData(index=partition, records=batch.payload)
                    ],
                )
            ],
            max_version=_PRODUCE_MAX_VERSION,
        )
        try:
            fut = conn.send_request(req)
        except Exception as e:  # noqa: BLE001 - it may have reached the socket: never resend
            self._log.exception("kafka_send_error", node=conn.node_id, error=repr(e))
            return True
        if fut.is_done and fut.exception is not None:
            # kafka-python fails these before encoding or writing anything (not connected,
            # paused, no common API version, timed out): not handed, so free to retry.
            self._warn("kafka_send_refused", node=conn.node_id, error=repr(fut.exception))
            return False
        # Succeeded (acks=0 resolves once written), or parked in the connection's own
        # request buffer (SASL re-authentication) to be written or failed by it: handed.
        return True

    async def _io_deliver(self, batch: _Batch) -> None:
        size = len(batch.payload)
        wait = _RECHECK_CONN
        while True:
            with self._lock:
                if batch.state is not _State.WAITING:
                    return  # abandoned by the sender thread
                try:
                    now = time.monotonic()
                    if now >= self._stop_deadline[0]:
                        batch.state = _State.SHUTDOWN
                    elif now >= batch.deadline:
                        batch.state = _State.UNAVAILABLE
                    else:
                        conn, partition, wait = self._io_pick(size, batch.key)
                        if conn is not None:
                            if self._io_write(conn, partition, batch):  # never raises
                                batch.state = _State.SENT
                                self._io_set_connected(True)
                            else:
                                wait = _RECHECK_CONN
                except Exception as e:  # noqa: BLE001 - a bug before any write: drop, count
                    self._log.exception("kafka_io_error", error=repr(e))
                    batch.state = _State.UNAVAILABLE
                if batch.state is not _State.WAITING:
                    batch.done.set()
                    return
            await self._net.sleep(wait)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, **kw)


class KafkaSender:
    """Takes lines from the queue, encodes record batches and writes them with acks=0.

    One thread takes, splits, encodes and settles; kafka-python's IO thread owns the
    sockets. A batch is written to at most one connection, once; if no leader connection
    is ready within ``unavailable_timeout`` it is dropped (``kafka_unavailable``).
    """

    def __init__(
        self, cfg: KafkaConfig, queue: DropQueue, ledger: Ledger, log: FilteringBoundLogger
    ) -> None:
        try:
            self._compression = compression_code(cfg.compression)
        except ValueError as e:
            raise ConfigError([f"kafka.compression: {e}"]) from None
        self._cfg = cfg
        self._queue = queue
        self._ledger = ledger
        self._log = log
        self._limiter = RateLimiter(_WARN_INTERVAL)
        self._lock = threading.Lock()  # batch state, shared with the IO thread
        self._books = threading.Lock()  # ledger settlement vs. stop() giving up on us
        self._books_closed = False
        self._stop_deadline = [float("inf")]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: _Client | None = None
        self._outstanding: _Batch | None = None
        # Lines taken from the queue and not yet settled (sent or dropped) in the ledger.
        self._held_lines = 0
        self._held_bytes = 0
        self._raw_budget = cfg.batch_max_bytes - HEADER_SIZE
        self._crashes = 0
        self._dropped_unavailable = 0

    # -- public ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while a connection to a leader of the topic is ready."""
        client = self._client
        return client is not None and client.connected and client.alive

    def start(self) -> None:
        """Start the sender thread and return at once; it connects in the background."""
        if self._thread is not None:
            raise RuntimeError("KafkaSender already started")
        self._thread = threading.Thread(target=self._run, name="shipper-sender", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Drain the queue until empty or ``deadline`` (monotonic), flush, close, return."""
        self._stop_deadline[0] = deadline
        self._stopping.set()
        self._queue.wake()
        thread = self._thread
        if thread is None:
            return
        thread.join(max(0.0, deadline - time.monotonic()) + _GRACE)
        if thread.is_alive():
            # The caller settles what we still hold (as ``shutdown``); we must not any more.
            with self._books:
                self._books_closed = True
            self._log.error("sender_stop_timeout", held_lines=self._held_lines)

    # -- sender thread -----------------------------------------------------------------------
    def _run(self) -> None:
        self._log.info(
            "sender_started",
            topic=self._cfg.topic,
            bootstrap_servers=list(self._cfg.bootstrap_servers),
            compression=self._cfg.compression,
        )
        last_crash = 0.0
        while True:
            try:
                self._loop()
                break
            except Exception as e:  # noqa: BLE001 - never die silently: log, settle, restart
                now = time.monotonic()
                self._crashes = self._crashes + 1 if now - last_crash < 60 else 1
                last_crash = now
                self._log.exception("sender_crashed", error=repr(e), crashes=self._crashes)
                try:
                    self._abort_held("sender_error")
                except Exception as e2:  # noqa: BLE001
                    self._log.exception("sender_crashed", error=repr(e2), phase="settle")
                backoff = min(_CRASH_BACKOFF * 2 ** (self._crashes - 1), 30.0)
                if self._stopping.wait(backoff):
                    break  # crashed while (or before) stopping: leave the rest to the daemon
        try:
            self._finish_outstanding()
            self._abort_held("shutdown")  # runs not handed before the stop deadline
            if self._client is not None:
                self._client.close(self._stop_deadline[0])
        except Exception as e:  # noqa: BLE001
            self._log.exception("sender_close_error", error=repr(e))
        self._log.info("sender_stopped")

    def _loop(self) -> None:
        cfg = self._cfg
        take = self._queue.take
        max_bytes, max_lines = cfg.batch_max_bytes, cfg.batch_max_lines
        by_file = cfg.partition_by == "file"
        key: int | None = None
        if cfg.partition_by == "host":
            key = zlib.crc32(socket.gethostname().encode())
        while True:
            draining = self._stopping.is_set()
            if draining and time.monotonic() >= self._stop_deadline[0]:
                return
            client = self._ensure_client()
            out = self._outstanding
            if out is not None and out.done.is_set():
                self._finish_outstanding()
                out = None
            # While a batch is still on its way, do not sleep on an empty queue: settle it.
            idle = 0.0 if draining or out is not None else _IDLE_WAIT
            lines, nbytes = take(
                max_lines, self._raw_budget, idle, 0.0 if draining else cfg.linger, by_file
            )
            if by_file:
                key = zlib.crc32(self._queue.last_source.encode())
            if not lines:
                self._finish_outstanding()
                if draining:
                    return  # the queue is empty
                continue
            self._held_lines += len(lines)
            self._held_bytes += nbytes
            self._adapt_budget(len(lines), nbytes)
            for run, raw in split_batches(lines, max_bytes, max_lines):
                if draining and time.monotonic() >= self._stop_deadline[0]:
                    return  # the rest of this take is settled as ``shutdown``
                if len(run) == 1 and batch_size(run) > max_bytes:
                    self._settle_dropped("line_too_long", 1, raw)
                    self._warn("line_too_long", line_bytes=raw, batch_max_bytes=max_bytes)
                    continue
                payload = encode_batch(run, int(time.time() * 1000), self._compression)
                self._finish_outstanding()  # at most one batch waits while we encode the next
                self._submit(client, _Batch(payload, len(run), raw, 0.0, key))

    def _adapt_budget(self, n: int, nbytes: int) -> None:
        # Take about one batch worth of raw bytes, so a take rarely splits into two batches.
        room = self._cfg.batch_max_bytes - HEADER_SIZE
        self._raw_budget = max(1, room * nbytes // (nbytes + _RECORD_OVERHEAD * n))

    def _ensure_client(self) -> _Client:
        client = self._client
        if client is not None and client.alive:
            return client
        if client is not None:
            self._log.error("kafka_io_crashed")
            self._finish_outstanding()
            client.close(time.monotonic())
            self._client = None
        client = _Client(self._cfg, self._log, self._lock, self._limiter, self._stop_deadline)
        self._client = client
        client.start()
        return client

    def _submit(self, client: _Client, batch: _Batch) -> None:
        batch.deadline = time.monotonic() + self._cfg.unavailable_timeout
        self._outstanding = batch
        try:
            client.submit(batch)
        except Exception as e:  # noqa: BLE001 - IO loop closed or crashed: the batch never left
            self._log.error("kafka_submit_error", error=repr(e))
            with self._lock:
                batch.state = _State.UNAVAILABLE
            batch.done.set()

    def _finish_outstanding(self) -> None:
        batch = self._outstanding
        if batch is None:
            return
        wait = min(batch.deadline, self._stop_deadline[0]) - time.monotonic() + _GRACE
        if not batch.done.wait(max(0.0, wait)):
            with self._lock:
                if batch.state is _State.WAITING:
                    batch.state = _State.ABANDONED
        self._outstanding = None
        if batch.state is _State.SENT:
            self._held_lines -= batch.lines
            self._held_bytes -= batch.nbytes
            with self._books:
                if not self._books_closed:
                    self._ledger.sent(batch.lines, batch.nbytes)
        elif batch.state is _State.SHUTDOWN:
            self._settle_dropped("shutdown", batch.lines, batch.nbytes)
        else:
            self._dropped_unavailable += batch.lines
            self._settle_dropped("kafka_unavailable", batch.lines, batch.nbytes)
            self._warn(
                "kafka_batch_dropped",
                reason="kafka_unavailable",
                lines=batch.lines,
                total_lines=self._dropped_unavailable,
                waited=self._cfg.unavailable_timeout,
                abandoned=batch.state is _State.ABANDONED,
            )

    def _settle_dropped(self, reason: str, lines: int, nbytes: int) -> None:
        self._held_lines -= lines
        self._held_bytes -= nbytes
        with self._books:
            if not self._books_closed:
                self._ledger.dropped(reason, lines, nbytes)

    def _abort_held(self, reason: str) -> None:
        """Settle everything taken and still unsettled (the outstanding batch first)."""
        if self._outstanding is not None:
            self._finish_outstanding()
        if self._held_lines or self._held_bytes:
            self._log.warning("sender_lines_dropped", reason=reason, lines=self._held_lines)
            self._settle_dropped(reason, self._held_lines, self._held_bytes)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, **kw)
