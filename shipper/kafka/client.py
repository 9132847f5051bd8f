"""The IO-thread side of sending: which partition and connection a batch goes to, and
writing it there once.

Everything named ``_io_*`` runs on kafka-python's IO thread; the rest is safe from any
thread. A batch is a ``Batch`` whose state changes, under a lock shared with the sender
thread, from ``WAITING`` to exactly one final state.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from shipper.kafka import compat, security
from shipper.log import RateLimiter

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from shipper.config import KafkaConfig

__all__ = ["Batch", "Client", "State"]

_TICK: Final = 0.25  # IO-thread housekeeping period: connect leaders, track connectivity
_RECHECK_ROOM: Final = 0.001  # a waiting batch re-checks a full connection this often
_RECHECK_CONN: Final = 0.01  # ... and a missing connection this often


class State(enum.Enum):
    """Where a batch is: waiting for a connection, or its one final outcome."""

    WAITING = "waiting"  # in the IO thread's hands, not yet written to a connection
    SENT = "sent"  # written to a connection (counted as sent, never handed again)
    UNAVAILABLE = "unavailable"  # no ready leader connection within unavailable_timeout
    SHUTDOWN = "shutdown"  # still waiting when stop()'s deadline passed
    ABANDONED = "abandoned"  # the sender gave up waiting for the IO thread's verdict


class Batch:
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
        self.state = State.WAITING
        self.done = threading.Event()


class Client:
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
        *,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._count = count  # bumps an event counter (the ledger's)
        self._topic = cfg.topic
        self._log = log
        self._lock = lock
        self._limiter = limiter
        self._stop_deadline = stop_deadline  # [monotonic deadline], inf until stop()
        self._max_in_flight = cfg.max_in_flight_bytes
        self._net, self._manager = compat.new_client(cfg, on_connect=self._io_on_connect)
        # broker -> reason of its last failed connection, while a security failure stands
        self._auth_failures: dict[str, str] = {}  # IO thread only
        #: The reason of the latest security failure (``security.AUTH_REASONS``) of a broker
        #: that has not connected since, or None (set by the IO thread, read by any).
        self.auth_failure: str | None = None
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
        return compat.io_alive(self._net)

    def submit(self, batch: Batch) -> None:
        """Hand ``batch`` to the IO thread, which writes it once or gives up at its deadline."""
        self._net.call_soon_threadsafe(lambda: self._io_deliver(batch))

    def buffered_bytes(self) -> int:
        """Bytes written to connections and not yet handed to the kernel (all brokers)."""
        return sum(compat.buffered(c) for c in compat.connections(self._manager))

    def pending_bytes(self) -> int:
        """Bytes written to connections but not yet acknowledged by the broker's TCP stack."""
        conns = compat.connections(self._manager)
        return sum(compat.buffered(c) + compat.kernel_outq(c) for c in conns)

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
            for conn in compat.connections(self._manager):
                compat.abort(conn, "shutdown")
            self._net.close()
        except Exception as e:  # noqa: BLE001 - closing is best effort, but say so
            self._log.warning("kafka_close_error", error=repr(e))

    # -- IO thread ---------------------------------------------------------------------------
    def _io_start(self) -> None:
        self._cluster.add_listener(self._io_on_metadata)
        self._cluster.add_topic(self._topic)  # request_update -> refresh loop -> bootstrap
        self._net.call_soon(self._io_housekeeping)

    def _io_on_connect(self, broker: str, exc: BaseException | None) -> None:
        """Every connection attempt ends here: a security failure is one rate-limited
        ``kafka_auth_failed`` line per reason saying which, counted, and kept for /health."""
        failures = self._auth_failures
        failures.pop(broker, None)
        why = None if exc is None else security.reason(exc)
        if why in security.AUTH_REASONS:
            failures[broker] = why  # the latest last
        self.auth_failure = next(reversed(failures.values()), None)
        if exc is None or why not in security.AUTH_REASONS:
            return  # connected, or the broker is just not there (kafka_unavailable says so)
        if self._count is not None:
            self._count("kafka_auth_failed")
        self._limiter.warn(
            self._log,
            "kafka_auth_failed",
            key=f"kafka_auth_failed:{why}",
            reason=why,
            broker=broker,
            detail=str(exc)[:300],
            **security.describe(self._cfg.security),
        )

    def _io_on_metadata(self, cluster: Any) -> None:
        parts = cluster.partitions_for_topic(self._topic) or ()
        routes = []
        for p in sorted(parts):
            leader = cluster.leader_for_partition(compat.TopicPartition(self._topic, p))
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
        died = compat.restart_dead_refresh_loop(cluster)
        if died is not None:
            self._log.warning("kafka_metadata_loop_restart", error=repr(died))
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
                if self.auth_failure is not None:
                    reason = self.auth_failure  # kafka_auth_failed said which, and how
                elif not self._manager.bootstrapped:
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
        except (compat.kerr.NodeNotReadyError, compat.kerr.UnknownBrokerIdError):
            return None  # backing off, or metadata is being refreshed
        except compat.kerr.KafkaError as e:  # cached auth failures and the like
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
            held = compat.buffered(conn)
            if held and held + size > self._max_in_flight:
                wait = _RECHECK_ROOM
                continue
            self._rr = i + 1
            return conn, partition, 0.0
        return None, -1, wait

    def _io_write(self, conn: Any, partition: int, batch: Batch) -> bool:
        """Write ``batch`` to ``conn``; True once written (or possibly written)."""
        req = compat.produce_request(self._topic, partition, batch.payload)
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

    async def _io_deliver(self, batch: Batch) -> None:
        size = len(batch.payload)
        wait = _RECHECK_CONN
        while True:
            with self._lock:
                if batch.state is not State.WAITING:
                    return  # abandoned by the sender thread
                try:
                    now = time.monotonic()
                    if now >= self._stop_deadline[0]:
                        batch.state = State.SHUTDOWN
                    elif now >= batch.deadline:
                        batch.state = State.UNAVAILABLE
                    else:
                        conn, partition, wait = self._io_pick(size, batch.key)
                        if conn is not None:
                            if self._io_write(conn, partition, batch):  # never raises
                                batch.state = State.SENT
                                self._io_set_connected(True)
                            else:
                                wait = _RECHECK_CONN
                except Exception as e:  # noqa: BLE001 - a bug before any write: drop, count
                    self._log.exception("kafka_io_error", error=repr(e))
                    batch.state = State.UNAVAILABLE
                if batch.state is not State.WAITING:
                    batch.done.set()
                    return
            await self._net.sleep(wait)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, **kw)
