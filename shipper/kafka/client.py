"""The IO-thread side of sending: which partition and connection a batch goes to, writing it
there once, fencing every connection so the broker's answers confirm what it took, and what
each broker's state is.

Everything named ``_io_*`` runs on kafka-python's IO thread; the rest is safe from any
thread. A batch is a ``Batch`` whose state changes, under a lock shared with the sender
thread, from ``WAITING`` to exactly one final state.

**Fences.** Kafka handles the requests of one connection one at a time, in order, and
closes the connection when an acks=0 produce fails. So a small request with an answer (a
*fence*) written after some produce requests confirms, when its answer comes, that the
leader appended every one of them. Each connection (a *link*) keeps the batches written
since its last fence as one open segment, and a queue of fenced segments waiting for their
answer. An answer confirms its segment and every one before it; a closed connection leaves
everything it still holds *unconfirmed* (it may or may not be in Kafka). Nothing is ever
written twice.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from shipper.kafka import compat, security
from shipper.log import RateLimiter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from structlog.typing import FilteringBoundLogger

    from shipper.config import KafkaConfig
    from shipper.ledger import Ledger

__all__ = ["Batch", "Books", "Client", "State"]

_TICK: Final = 0.25  # IO-thread housekeeping period: connect leaders, stalls, limits
_RECHECK_ROOM: Final = 0.05  # a batch waiting for a fence's answer re-checks this often
_RECHECK_CONN: Final = 0.01  # ... and a missing connection this often
#: Connections closed by the broker right after produces, in a row, that mean "rejected".
REJECT_STREAK: Final = 3
#: The batch size rejections never halve below (unless the configured size is smaller).
REJECT_FLOOR: Final = 16 * 1024
_LIMIT_RETRY: Final = 5.0  # seconds before asking again for limits a broker did not answer
_PROBE_RETRY: Final = 0.2  # seconds before asking a leader again whether it can append


class State(enum.Enum):
    """Where a batch is: waiting for a connection, or its one final outcome."""

    WAITING = "waiting"  # in the IO thread's hands, not yet written to a connection
    SENT = "sent"  # written to a connection (in flight in the ledger, never written again)
    UNAVAILABLE = "unavailable"  # no ready leader connection within unavailable_timeout
    SHUTDOWN = "shutdown"  # still waiting when stop()'s deadline passed
    ABANDONED = "abandoned"  # the sender gave up waiting for the IO thread's verdict


class Batch:
    """One encoded RecordBatch on its way to a connection; its state changes under a lock."""

    __slots__ = ("deadline", "done", "key", "lines", "nbytes", "payload", "state", "topic")

    def __init__(
        self,
        payload: bytes,
        lines: int,
        nbytes: int,
        deadline: float,
        *,
        key: int | None = None,
        topic: str = "",
    ) -> None:
        self.payload = payload
        self.topic = topic
        self.key = key  # partition = key % partitions; None: round-robin
        self.lines = lines
        self.nbytes = nbytes
        self.deadline = deadline
        self.state = State.WAITING
        self.done = threading.Event()


class Books:
    """The ledger transitions of the lines the sender took, from the sender thread and the IO
    thread alike, until ``close``: then the daemon settles whatever is left itself."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """No transition after this one returns."""
        with self._lock:
            self._closed = True

    def sent(self, lines: int, nbytes: int) -> None:
        """Written to a connection: queued -> in flight."""
        with self._lock:
            if not self._closed:
                self.ledger.sent(lines, nbytes)

    def confirmed(self, lines: int, nbytes: int) -> None:
        """Covered by an answered fence: in flight -> confirmed."""
        with self._lock:
            if not self._closed:
                self.ledger.confirmed(lines, nbytes)

    def unconfirmed(self, reason: str, lines: int, nbytes: int) -> None:
        """Their connection was lost first: in flight -> unconfirmed{reason}."""
        with self._lock:
            if not self._closed:
                self.ledger.unconfirmed(reason, lines, nbytes)

    def reclassify(self, was: str, reason: str, lines: int, nbytes: int) -> None:
        """Unconfirmed{was} lines were in fact unconfirmed{reason}."""
        with self._lock:
            if not self._closed:
                self.ledger.reclassify(was, reason, lines, nbytes)

    def dropped(self, reason: str, lines: int, nbytes: int) -> None:
        """Never written: queued -> dropped{reason}."""
        with self._lock:
            if not self._closed:
                self.ledger.dropped(reason, lines, nbytes)


class _Segment:
    """Batches written to one connection between two fences: lines, payload bytes, bytes on
    the wire, and per topic [lines, payload bytes, largest batch]."""

    __slots__ = ("at", "lines", "nbytes", "topics", "wire")

    def __init__(self) -> None:
        self.at = 0.0  # when its fence was written (0 while open)
        self.lines = 0
        self.nbytes = 0
        self.wire = 0
        self.topics: dict[str, list[int]] = {}

    def add(self, topic: str, lines: int, nbytes: int, wire: int) -> None:
        self.lines += lines
        self.nbytes += nbytes
        self.wire += wire
        t = self.topics.get(topic)
        if t is None:
            self.topics[topic] = [lines, nbytes, wire]
        else:
            t[0] += lines
            t[1] += nbytes
            t[2] = max(t[2], wire)


class _Link:
    """One connection's written data that no fence answer has confirmed yet."""

    __slots__ = ("conn", "done", "fences", "held", "node", "open", "opened", "reason")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.node: int = conn.node_id
        self.open = _Segment()  # written since the last fence
        self.opened = 0.0  # when the open segment got its first batch
        self.fences: deque[_Segment] = deque()  # fenced, answer pending, oldest first
        self.held = 0  # wire bytes of the open segment and the fenced ones
        self.reason: str | None = None  # why we closed it ourselves
        self.done = False  # settled: closed and counted

    def segments(self) -> list[_Segment]:
        return [*self.fences, self.open] if self.open.lines else list(self.fences)

    @property
    def lines(self) -> int:
        return self.open.lines + sum(f.lines for f in self.fences)


class _Node:
    """What we know about one broker, for /health and the logs."""

    __slots__ = ("address", "connected_at", "error", "rtt", "stalled_since")

    def __init__(self) -> None:
        self.address = ""
        self.connected_at: float | None = None
        self.stalled_since: float | None = None
        self.error: str | None = None  # the reason the last connection attempt failed
        self.rtt: float | None = None  # the last fence round trip


class Client:
    """kafka-python's selector + connection manager on their own IO thread, for the topics of
    every route: one connection per broker, shared by the topics.

    Everything named ``_io_*`` runs on the IO thread; the rest is safe from any thread.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        topics: Sequence[str],
        books: Books,
        log: FilteringBoundLogger,
        *,
        lock: threading.RLock,
        limiter: RateLimiter,
        stop_deadline: list[float],
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._topics = tuple(dict.fromkeys(topics or (cfg.topic,)))
        self._books = books
        self._ledger = books.ledger
        self._log = log
        self._lock = lock
        self._limiter = limiter
        self._stop_deadline = stop_deadline  # [monotonic deadline], inf until stop()
        self._on_confirmed = on_confirmed
        self._max_in_flight = cfg.max_in_flight_bytes
        # A fence goes after fence_bytes, or after half of max_in_flight_bytes if that is
        # less, so the next batches can be written while its answer is on its way.
        self._fence_bytes = min(cfg.fence_bytes, max(1, cfg.max_in_flight_bytes // 2))
        self._fence_interval = cfg.fence_interval
        self._stall_timeout = cfg.stall_timeout
        self._stall_ms = cfg.stall_timeout * 1000
        self._net, self._manager = compat.new_client(cfg, self._io_on_connect)
        self._cluster: Any = self._manager.cluster
        self._routes: dict[str, tuple[tuple[int, int], ...]] = {}  # (partition, leader)
        self._nparts: dict[str, int] = {}  # partitions of a topic, with or without a leader
        self._rr: dict[str, int] = {}
        # (topic, partition) -> the leader that said it is ready to append (ListOffsets
        # answered without error); and when a probe went to ask, for those not known yet.
        self._ready_parts: dict[tuple[str, int], int] = {}
        self._probing: dict[tuple[str, int], float] = {}
        self._links: dict[Any, _Link] = {}  # connection -> its link
        self._room_waiters: list[Any] = []  # futures of batches waiting for a fence's answer
        self._nodes: dict[int, _Node] = {}
        self._last_error: tuple[str, str, str] | None = None  # (reason, address, error)
        # broker -> reason of its last failed connection, while a security failure stands
        self._auth_failures: dict[str, str] = {}  # IO thread only
        #: The reason of the latest security failure (``security.AUTH_REASONS``) of a broker
        #: that has not connected since, or None (set by the IO thread, read by any).
        self.auth_failure: str | None = None
        # Limits: topic -> max.message.bytes, broker -> message.max.bytes, topic -> size
        # rejections brought a topic's batches down to; what is being asked, and when.
        self._topic_max: dict[str, int] = {}
        self._broker_max: dict[int, int] = {}
        self._reject_cap: dict[str, int] = {}
        self._topic_answered: set[str] = set()  # topics whose limit is read (or unreadable)
        self._settled: set[str] = set()  # ... and some broker's too: batches can be sized
        self._waited: set[str] = set()  # topics the sender waited for once already
        self._asked: dict[Any, float] = {}  # topic or node id -> when last asked
        self._asking: set[Any] = set()
        self._answered: set[Any] = set()  # asked and answered (a value, or a lasting error)
        self._limits_changed = threading.Condition(threading.Lock())
        self._effective: dict[str, int] = {}
        # Rejections: topic -> closes in a row right after produces, and what they held.
        self._streak: dict[str, list[tuple[int, int, int]]] = {}
        self.connected = False
        self._ready_nodes: frozenset[int] = frozenset()  # leaders with a ready connection
        self._down_since = time.monotonic()
        self._closing = False
        self._last_nudge = 0.0

    # -- any thread ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the IO thread and, on it, metadata for the topics (which bootstraps)."""
        self._net.start()
        self._net.call_soon_threadsafe(self._io_start)

    @property
    def alive(self) -> bool:
        """False once the IO thread has died."""
        return compat.io_alive(self._net)

    def submit(self, batch: Batch) -> None:
        """Hand ``batch`` to the IO thread, which writes it once or gives up at its deadline."""
        self._net.call_soon_threadsafe(lambda: self._io_deliver(batch))

    def batch_limit(self, topic: str, deadline: float) -> int:
        """The largest batch ``topic`` accepts: ``batch_max_bytes``, or less when the topic's
        ``max.message.bytes``, a broker's ``message.max.bytes`` or rejections say so.

        The first time, waits until ``deadline`` for the limits to be read (a batch sized
        before could be refused as a whole).
        """
        if topic not in self._settled and topic not in self._waited:
            with self._limits_changed:
                while topic not in self._settled:
                    left = min(deadline, self._stop_deadline[0]) - time.monotonic()
                    if left <= 0 or not self.alive:
                        break
                    self._limits_changed.wait(min(left, _TICK))
            self._waited.add(topic)
        return self._effective.get(topic, self._cfg.batch_max_bytes)

    def in_flight_bytes(self) -> int:
        """Bytes written to connections and not yet confirmed (all brokers)."""
        with self._lock:
            return sum(link.held for link in self._links.values())

    def in_flight_lines(self) -> int:
        """Lines written to connections and not yet confirmed (all brokers)."""
        with self._lock:
            return sum(link.lines for link in self._links.values())

    def health(self) -> dict[str, Any]:
        """``{"state": connected|stalled|unavailable, "brokers": {id: {...}}}`` for /health."""
        now = time.monotonic()
        brokers: dict[str, dict[str, Any]] = {}
        with self._lock:
            leaders = {leader for routes in self._routes.values() for _, leader in routes}
            held: dict[int, int] = {}
            for link in self._links.values():
                held[link.node] = held.get(link.node, 0) + link.held
            for node_id in sorted(leaders | set(held)):
                node = self._nodes.get(node_id) or _Node()
                doc: dict[str, Any] = {"address": node.address or None}
                if node.stalled_since is not None:
                    doc["state"] = "stalled"
                    doc["stalled_for"] = round(now - node.stalled_since, 1)
                elif node_id in held or node_id in self._ready_nodes:
                    doc["state"] = "connected"
                    doc["in_flight_bytes"] = held.get(node_id, 0)
                    if node.rtt is not None:
                        doc["fence_rtt_ms"] = round(node.rtt * 1000, 2)
                else:
                    doc["state"] = "unavailable"
                    if node.error:
                        doc["error"] = node.error
                brokers[str(node_id)] = doc
        states = {b["state"] for b in brokers.values()}
        if "stalled" in states:
            state = "stalled"
        elif states == {"connected"} and self.connected:
            state = "connected"
        else:
            state = "unavailable"
        out: dict[str, Any] = {"state": state, "brokers": brokers}
        if state == "unavailable" and not brokers and self._last_error is not None:
            out["error"] = "{} ({})".format(*self._last_error[:2])
        return out

    def close(self, deadline: float, reason: str = "shutdown") -> None:
        """Fence what every connection holds and wait for the answers until ``deadline``;
        count what is still unconfirmed as ``reason``; close the connections and the IO
        thread."""
        if self.alive:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._net.call_soon_threadsafe(self._io_fence_all)
            while self.alive and time.monotonic() < deadline and self.in_flight_lines():
                time.sleep(0.005)
        done = threading.Event()

        def finish() -> None:
            self._io_abort_all(reason)
            self._closing = True
            self._manager.close()
            done.set()

        if self.alive:
            try:
                self._net.call_soon_threadsafe(finish)
                done.wait(max(0.1, deadline - time.monotonic()))
            except RuntimeError:
                pass
            self._net.stop(timeout_ms=max(100.0, (deadline - time.monotonic()) * 1000))
        with self._lock:  # the IO thread is gone or never got to it: settle here
            for link in list(self._links.values()):
                self._settle(link, reason, None)
        try:
            for conn in compat.connections(self._manager):
                compat.abort(conn, "shutdown")
            self._net.close()
        except Exception as e:  # noqa: BLE001 - closing is best effort, but say so
            self._log.warning("kafka_close_error", error=repr(e))
        with self._limits_changed:
            self._limits_changed.notify_all()
        self._ledger.clear_gauges("kafka_in_flight_bytes:")

    # -- IO thread: start, metadata, limits -----------------------------------------------
    def _io_start(self) -> None:
        self._cluster.add_listener(self._io_on_metadata)
        for topic in self._topics:
            self._cluster.add_topic(topic)  # request_update -> refresh loop -> bootstrap
        self._net.call_soon(self._io_housekeeping)

    def _io_on_metadata(self, cluster: Any) -> None:
        try:
            with self._lock:
                self._io_update_routes(cluster)
            self._io_ask_limits()
        except Exception as e:  # noqa: BLE001 - kafka-python would swallow it: say it here
            self._log.exception("kafka_metadata_error", error=repr(e))

    def _io_update_routes(self, cluster: Any) -> None:
        for topic in self._topics:
            parts = cluster.partitions_for_topic(topic) or ()
            routes = []
            for p in sorted(parts):
                leader = cluster.leader_for_partition(compat.TopicPartition(topic, p))
                if leader is not None and leader >= 0:
                    routes.append((p, leader))
            new = tuple(routes)
            self._nparts[topic] = len(parts)
            if new != self._routes.get(topic, ()):
                self._routes[topic] = new
                self._streak.pop(topic, None)  # leaders moved: closes until now are explained
                self._log.info(
                    "kafka_metadata",
                    topic=topic,
                    partitions=len(parts),
                    available=len(new),
                    leaders=sorted({leader for _, leader in new}),
                )
        for node_id in compat.broker_ids(cluster):
            node = self._nodes.setdefault(node_id, _Node())
            meta = cluster.broker_metadata(node_id)
            if meta is not None:
                node.address = f"{meta.host}:{meta.port}"

    def _io_ask_limits(self) -> None:
        """Ask for the limits not known yet, and again every ``metadata_refresh``."""
        now = time.monotonic()
        for topic in self._topics:
            if self._routes.get(topic) and self._due(topic, now):
                self._io_ask(topic, compat.describe_topic(topic), None)
        for node_id in compat.broker_ids(self._cluster):
            if self._due(node_id, now):
                self._io_ask(node_id, compat.describe_broker(node_id), node_id)

    def _due(self, what: Any, now: float) -> bool:
        if what in self._asking:
            return False
        wait = self._cfg.metadata_refresh if what in self._answered else _LIMIT_RETRY
        return now - self._asked.get(what, -wait) >= wait

    def _io_ask(self, what: Any, request: Any, node_id: int | None) -> None:
        self._asking.add(what)
        self._asked[what] = time.monotonic()
        fut = self._manager.send(request, node_id=node_id)
        fut.add_callback(lambda resp: self._io_limits_answer(what, resp, None))
        fut.add_errback(lambda exc: self._io_limits_answer(what, None, exc))

    def _io_limits_answer(self, what: Any, resp: Any, exc: BaseException | None) -> None:
        self._asking.discard(what)
        key = "max.message.bytes" if isinstance(what, str) else "message.max.bytes"
        value: int | None = None
        if exc is None:
            try:
                value = int(compat.config_values(resp)[key])
            except (compat.kerr.KafkaError, KeyError, ValueError) as e:
                exc = e
        if exc is not None and compat.retriable(exc):
            return  # asked again later
        self._answered.add(what)
        if isinstance(what, str):
            if value is not None:
                self._topic_max[what] = value
            elif what not in self._topic_answered:
                self._warn("kafka_limits_unknown", topic=what, error=repr(exc))
            self._topic_answered.add(what)
        elif value is not None:
            self._broker_max[what] = value
        elif exc is not None:
            self._warn("kafka_limits_unknown", node=what, error=repr(exc))
        self._io_update_limits()

    def _io_update_limits(self) -> None:
        brokers = min(self._broker_max.values(), default=None)
        broker_answered = any(isinstance(w, int) for w in self._answered)
        for topic in self._topic_answered:
            candidates = [self._cfg.batch_max_bytes, self._topic_max.get(topic), brokers]
            candidates.append(self._reject_cap.get(topic))
            limit = min(c for c in candidates if c is not None)
            settled = broker_answered or topic in self._reject_cap
            changed = self._effective.get(topic) != limit
            self._effective[topic] = limit
            if settled and (changed or topic not in self._settled):
                self._settled.add(topic)
                self._log.info(
                    "kafka_limits",
                    topic=topic,
                    max_message_bytes=self._topic_max.get(topic),
                    message_max_bytes=brokers,
                    rejected_cap=self._reject_cap.get(topic),
                    batch_max_bytes=limit,
                )
        with self._limits_changed:
            self._limits_changed.notify_all()

    # -- IO thread: connections ----------------------------------------------------------
    def _io_on_connect(self, node_id: Any, address: str, exc: BaseException | None) -> None:
        """How a connection attempt ended (bootstrap connections have string ids)."""
        try:
            with self._lock:
                self._io_connect_ended(node_id, address, exc)
        except Exception as e:  # noqa: BLE001 - kafka-python would swallow it: say it here
            self._log.exception("kafka_connect_hook_error", error=repr(e))

    def _io_connect_ended(self, node_id: Any, address: str, exc: BaseException | None) -> None:
        bootstrap = not isinstance(node_id, int)
        node = None if bootstrap else self._nodes.setdefault(node_id, _Node())
        if node is not None:
            node.address = address
        why = None if exc is None else compat.connect_reason(exc)
        failures = self._auth_failures
        failures.pop(address, None)
        if why in security.AUTH_REASONS:
            failures[address] = why  # the latest last
        self.auth_failure = next(reversed(failures.values()), None)
        if exc is None or why is None:
            self._last_error = None
            if node is not None:
                if node.connected_at is not None:
                    self._ledger.event("kafka_reconnects")
                node.connected_at = time.monotonic()
                node.stalled_since = None  # it answered the handshake
                # A new connection, maybe to a restarted broker still loading its logs: ask
                # again before writing to each of its partitions.
                for part in [k for k, v in self._ready_parts.items() if v == node_id]:
                    del self._ready_parts[part]
                node.error = None
            return
        if node is not None:
            node.error = why
        self._last_error = (why, address, repr(exc))
        self._ledger.event("kafka_connect_failures")
        if why in security.AUTH_REASONS:
            # A security failure: one rate-limited line per reason saying which, counted,
            # and on /health (kafka_auth_failed) until that broker lets us in.
            self._ledger.event("kafka_auth_failed")
            self._limiter.warn(
                self._log,
                "kafka_auth_failed",
                key=f"kafka_auth_failed:{why}",
                reason=why,
                broker=address,
                detail=str(exc)[:300],
                **security.describe(self._cfg.security),
            )
            return
        self._limiter.warn(
            self._log,
            "kafka_connect_failed",
            key=f"kafka_connect_failed:{node_id}:{why}",
            node=node_id if not bootstrap else None,
            address=address,
            reason=why,
            error=repr(exc),
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
        with self._lock:
            self._io_watch_links(now)
        ready = self._io_update_connected()
        if not ready and now - self._last_nudge >= 1.0:
            # A topic without a ready leader connection: the leader may have moved (or the
            # topic may appear); ask for metadata again, at most once a second.
            self._last_nudge = now
            cluster.request_update()
        if self._manager.bootstrapped:
            self._io_ask_limits()
        if not ready:
            down = now - self._down_since
            if down > 1.0:
                self._warn(
                    "kafka_unavailable",
                    reason=self._unavailable_reason(),
                    down_for=round(down, 1),
                    bootstrap_servers=list(self._cfg.bootstrap_servers),
                    topics=list(self._topics),
                )
        gauges: dict[int, int] = dict.fromkeys(self._nodes, 0)
        for link in list(self._links.values()):
            gauges[link.node] = gauges.get(link.node, 0) + link.held
        for node_id, held in gauges.items():
            self._ledger.set_gauge(f"kafka_in_flight_bytes:{node_id}", held)

    def _unavailable_reason(self) -> str:
        if self.auth_failure is not None:
            return self.auth_failure  # kafka_auth_failed said which, and how
        if not self._manager.bootstrapped:
            if self._last_error is None:
                return "bootstrapping"
            reason, address, _ = self._last_error
            return f"bootstrap failed: {reason} ({address})"
        missing = [t for t in self._topics if not self._routes.get(t)]
        why = f"no leader for topic {missing[0]}" if missing else "leader connection not ready"
        for node in self._nodes.values():
            if node.stalled_since is not None:
                why = f"broker stalled ({node.address})"
                break
            if node.error and not missing:
                why = f"leader connection failed: {node.error} ({node.address})"
        return why

    def _io_update_connected(self) -> bool:
        """Connect to every leader (in the background), and note whether each topic has a
        ready one."""
        ready = bool(self._topics)
        ready_nodes = set()
        for topic in self._topics:
            found = False
            for leader in {leader for _, leader in self._routes.get(topic, ())}:
                conn = self._io_conn(leader)  # connects in the background when needed
                if conn is not None and conn.connected and not conn.paused:
                    found = True
                    ready_nodes.add(leader)
            ready = ready and found
        self._ready_nodes = frozenset(ready_nodes)
        self._io_set_connected(ready)
        return ready

    def _io_set_connected(self, ready: bool) -> None:
        if ready == self.connected:
            return
        self.connected = ready
        if ready:
            suppressed = self._limiter.allow("kafka_connected")
            if suppressed is not None:
                self._log.info("kafka_connected", topics=list(self._topics), suppressed=suppressed)
        else:
            self._down_since = time.monotonic()
            self._warn("kafka_disconnected", topics=list(self._topics))

    def _io_conn(self, node_id: int) -> Any:
        try:
            return self._manager.get_connection(node_id)
        except (compat.kerr.NodeNotReadyError, compat.kerr.UnknownBrokerIdError):
            return None  # backing off, or metadata is being refreshed
        except compat.kerr.KafkaError as e:  # cached auth failures and the like
            self._warn("kafka_connect_error", node=node_id, error=repr(e))
            return None

    # -- IO thread: writing and fencing ----------------------------------------------------
    def _io_pick(self, topic: str, size: int, key: int | None) -> tuple[Any, int, float]:
        """Return (link, partition, 0) for the next ready partition of ``topic`` whose
        connection has room, or (None, -1, wait).

        With a ``key``, only partition ``key % partitions`` will do (partition_by file/host).
        """
        routes = self._routes.get(topic, ())
        wait = _RECHECK_CONN
        if key is not None:
            nparts = self._nparts.get(topic, 0)
            want = key % nparts if nparts else -1
            routes = tuple(r for r in routes if r[0] == want)
        n = len(routes)
        rr = self._rr.get(topic, 0)
        for k in range(n):
            i = (rr + k) % n
            partition, leader = routes[i]
            conn = self._io_conn(leader)
            if conn is None or not conn.connected or conn.paused or conn.transport is None:
                continue
            if conn.transport.is_closing():
                continue
            if self._ready_parts.get((topic, partition)) != leader:
                self._io_probe(conn, topic, partition, leader)
                continue  # not before its leader said it can append: it would refuse
            link = self._links.get(conn)
            if link is None:
                link = self._io_new_link(conn)
            if link.held and link.held + size > self._max_in_flight:
                # Full of unconfirmed data: wait for answers (fencing what is open now).
                if link.open.lines:
                    self._io_fence(link)
                wait = _RECHECK_ROOM
                continue
            self._rr[topic] = i + 1
            return link, partition, 0.0
        return None, -1, wait

    def _io_new_link(self, conn: Any) -> _Link:
        link = _Link(conn)
        self._links[conn] = link
        conn.close_future.add_both(lambda value: self._io_closed(link, value))
        return link

    def _io_probe(self, conn: Any, topic: str, partition: int, leader: int) -> None:
        """Ask ``leader`` whether it can append to the partition yet (once at a time)."""
        key = (topic, partition)
        now = time.monotonic()
        if now - self._probing.get(key, -_PROBE_RETRY) < _PROBE_RETRY:
            return
        self._probing[key] = now
        try:
            fut = conn.send_request(
                compat.leader_ready_request(topic, partition), request_timeout_ms=self._stall_ms
            )
        except Exception as e:  # noqa: BLE001 - the connection is breaking: ask again later
            self._warn("kafka_probe_error", node=leader, error=repr(e))
            return
        fut.add_callback(lambda resp: self._io_probed(key, leader, resp, None))
        fut.add_errback(lambda exc: self._io_probed(key, leader, None, exc))

    def _io_probed(
        self, key: tuple[str, int], leader: int, resp: Any, exc: BaseException | None
    ) -> None:
        try:
            with self._lock:
                if exc is None:
                    exc = compat.partition_error(resp, *key)
                if exc is None:
                    self._ready_parts[key] = leader
                    self._probing.pop(key, None)
                    waiters, self._room_waiters = self._room_waiters, []
                    for waiter in waiters:
                        self._wake(waiter)
                    return
                if not compat.retriable(exc):
                    self._warn("kafka_partition_refused", topic=key[0], error=repr(exc))
                self._cluster.request_update()  # not (or no longer) the leader, maybe
        except Exception as e:  # noqa: BLE001 - kafka-python would swallow it: say it here
            self._log.exception("kafka_probe_answer_error", error=repr(e))

    def _io_write(self, link: _Link, partition: int, batch: Batch) -> bool:
        """Write ``batch`` to the link's connection; True once written (or possibly written)."""
        conn = link.conn
        req = compat.produce_request(batch.topic, partition, batch.payload)
        try:
            fut = conn.send_request(req)
        except Exception as e:  # noqa: BLE001 - it may have reached the socket: never resend
            self._log.exception("kafka_send_error", node=conn.node_id, error=repr(e))
            fut = None
        if fut is not None and fut.is_done and fut.exception is not None:
            # kafka-python fails these before encoding or writing anything (not connected,
            # paused, no common API version, timed out): not handed, so free to retry.
            self._warn("kafka_send_refused", node=conn.node_id, error=repr(fut.exception))
            return False
        # Succeeded (acks=0 resolves once written), or parked in the connection's own
        # request buffer (SASL re-authentication) to be written or failed by it: handed.
        wire = len(batch.payload)
        self._books.sent(batch.lines, batch.nbytes)
        if link.done:  # the connection closed under our feet: nothing will confirm these
            self._books.unconfirmed("connection_closed", batch.lines, batch.nbytes)
            return True
        seg = link.open
        if not seg.lines:  # the first batch since the last fence
            link.opened = time.monotonic()
        seg.add(batch.topic, batch.lines, batch.nbytes, wire)
        link.held += wire
        if seg.wire >= self._fence_bytes:
            self._io_fence(link)
        elif seg.lines == batch.lines:
            self._net.call_later(self._fence_interval, lambda: self._io_fence_due(link, seg))
        return True

    def _io_fence_due(self, link: _Link, seg: _Segment) -> None:
        with self._lock:
            if link.open is seg and seg.lines and not link.done:
                self._io_fence(link)

    def _io_fence(self, link: _Link) -> bool:
        """Write a fence after the link's open segment; False if the connection refused it."""
        seg = link.open
        try:
            fut = link.conn.send_request(compat.fence_request(), request_timeout_ms=self._stall_ms)
        except Exception as e:  # noqa: BLE001 - the connection is breaking: its close settles
            self._warn("kafka_fence_error", node=link.node, error=repr(e))
            return False
        if fut.is_done and fut.exception is not None:
            return False  # not written; the next write or the tick tries again
        seg.at = time.monotonic()
        link.fences.append(seg)
        link.open = _Segment()
        fut.add_callback(lambda _resp: self._io_answered(link, seg))
        self._ledger.event("kafka_fences")
        return True

    def _io_fence_all(self) -> None:
        """Fence every connection's open segment (the last step before closing)."""
        with self._lock:
            for link in list(self._links.values()):
                if link.open.lines and not link.done:
                    self._io_fence(link)

    def _io_answered(self, link: _Link, seg: _Segment) -> None:
        """A fence's answer: its segment and every one before it are confirmed."""
        try:
            with self._lock:
                if link.done or seg not in link.fences:
                    return
                now = time.monotonic()
                lines = 0
                while link.fences:
                    f = link.fences.popleft()
                    lines += f.lines
                    link.held -= f.wire
                    self._books.confirmed(f.lines, f.nbytes)
                    for topic in f.topics:
                        self._streak.pop(topic, None)
                    if f is seg:
                        break
                waiters, self._room_waiters = self._room_waiters, []
                for waiter in waiters:
                    self._wake(waiter)  # batches waiting for room: some was freed
                node = self._nodes.setdefault(link.node, _Node())
                node.rtt = now - seg.at
                node.stalled_since = None
                self._ledger.fence_answered(now - seg.at)
            if lines and self._on_confirmed is not None:
                self._on_confirmed()
        except Exception as e:  # noqa: BLE001 - kafka-python would swallow it: say it here
            self._log.exception("kafka_fence_answer_error", error=repr(e))

    def _io_watch_links(self, now: float) -> None:
        """Declare a connection stalled when a fence went unanswered for ``stall_timeout``
        (or data waited that long for a fence the connection would not take)."""
        for link in list(self._links.values()):
            if link.done:
                continue
            if link.fences:
                waited = now - link.fences[0].at
            elif link.open.lines:
                if now - link.opened >= self._fence_interval:
                    self._io_fence(link)  # the timer's fence was refused: try again
                waited = now - link.opened - self._fence_interval
            else:
                continue
            if waited >= self._stall_timeout:
                link.reason = "stalled"
                compat.abort(link.conn, "stalled: fence unanswered")
                if not link.done:  # no transport to abort: settle it ourselves
                    self._settle(link, "stalled", None)

    def _io_abort_all(self, reason: str) -> None:
        with self._lock:
            for link in list(self._links.values()):
                if not link.done:
                    link.reason = reason
                    compat.abort(link.conn, reason)
                    if not link.done:
                        self._settle(link, reason, None)

    def _io_closed(self, link: _Link, value: Any) -> None:
        """The link's connection closed (we closed it, or the peer, or kafka-python)."""
        exc = value if isinstance(value, BaseException) else None
        try:
            with self._lock:
                reason = link.reason or (
                    "stalled" if compat.is_timeout(exc) else "connection_closed"
                )
                self._settle(link, reason, exc)
        except Exception as e:  # noqa: BLE001 - kafka-python would swallow it: say it here
            self._log.exception("kafka_close_settle_error", error=repr(e))

    def _settle(self, link: _Link, reason: str, exc: BaseException | None) -> None:
        """Count everything ``link`` still holds as unconfirmed for ``reason`` (under the
        lock; once)."""
        if link.done:
            return
        link.done = True
        self._links.pop(link.conn, None)
        segments = link.segments()
        lines = sum(s.lines for s in segments)
        nbytes = sum(s.nbytes for s in segments)
        oldest = segments[0].at if segments and segments[0].at else link.opened
        link.fences.clear()
        link.open = _Segment()
        link.held = 0
        now = time.monotonic()
        if reason == "stalled":
            node = self._nodes.setdefault(link.node, _Node())
            if node.stalled_since is None:
                node.stalled_since = oldest or now
            self._ledger.event("kafka_stalls")
            compat.backoff(self._manager, link.node)
            self._limiter.warn(
                self._log,
                "kafka_stalled",
                key=f"kafka_stalled:{link.node}",
                node=link.node,
                address=node.address,
                unanswered_for=round(now - oldest, 2) if oldest else None,
                lines_unconfirmed=lines,
                stall_timeout=self._stall_timeout,
            )
        if not lines:
            return
        if reason == "connection_closed":
            self._io_count_closed(link, segments)
        else:
            self._books.unconfirmed(reason, lines, nbytes)
        if reason != "stalled":
            self._limiter.warn(
                self._log,
                "kafka_connection_lost",
                key=f"kafka_connection_lost:{link.node}:{reason}",
                node=link.node,
                reason=reason,
                lines_unconfirmed=lines,
                error=repr(exc) if exc is not None else None,
            )

    def _io_count_closed(self, link: _Link, segments: list[_Segment]) -> None:
        """A connection the peer closed while it held unconfirmed produce data: each topic's
        lines are ``connection_closed``, unless it is the ``REJECT_STREAK``-th such close of
        that topic in a row (no fence answered in between): then the broker is refusing its
        batches, and they all count as ``rejected``."""
        per_topic: dict[str, list[int]] = {}
        for s in segments:
            for topic, (lines, nbytes, largest) in s.topics.items():
                t = per_topic.setdefault(topic, [0, 0, 0])
                t[0] += lines
                t[1] += nbytes
                t[2] = max(t[2], largest)
        for topic, (lines, nbytes, largest) in per_topic.items():
            streak = self._streak.setdefault(topic, [])
            streak.append((lines, nbytes, largest))
            if len(streak) < REJECT_STREAK:
                self._books.unconfirmed("connection_closed", lines, nbytes)
                continue
            self._books.unconfirmed("rejected", lines, nbytes)
            for lines0, nbytes0, _ in streak[:-1]:
                self._books.reclassify("connection_closed", "rejected", lines0, nbytes0)
            del self._streak[topic]
            self._io_rejected(link.node, topic, streak)

    def _io_rejected(self, node: int, topic: str, streak: list[tuple[int, int, int]]) -> None:
        current = self._effective.get(topic, self._cfg.batch_max_bytes)
        floor = min(REJECT_FLOOR, current)
        smaller = max(floor, current // 2)
        self._reject_cap[topic] = smaller
        self._topic_answered.add(topic)
        self._ledger.event("kafka_batches_rejected", len(streak))
        self._limiter.warn(
            self._log,
            "kafka_batches_rejected",
            key=f"kafka_batches_rejected:{topic}",
            topic=topic,
            node=node,
            closes_in_a_row=len(streak),
            lines=sum(s[0] for s in streak),
            batch_bytes=[s[2] for s in streak],
            batch_max_bytes=smaller,
            floor=floor,
        )
        self._io_update_limits()

    async def _io_deliver(self, batch: Batch) -> None:
        size = len(batch.payload)
        while True:
            with self._lock:
                if batch.state is not State.WAITING:
                    return  # abandoned by the sender thread
                wait = self._io_attempt(batch, size)
                if batch.state is not State.WAITING:
                    batch.done.set()
                    return
            if wait == _RECHECK_ROOM:
                await self._io_wait_for_room(wait)  # woken early by a fence's answer
            else:
                await self._net.sleep(wait)

    def _io_attempt(self, batch: Batch, size: int) -> float:
        """Write ``batch`` if a connection is ready and has room, or settle it past its
        deadline; return how long to wait before the next attempt."""
        try:
            now = time.monotonic()
            if now >= self._stop_deadline[0]:
                batch.state = State.SHUTDOWN
                return 0.0
            if now >= batch.deadline:
                batch.state = State.UNAVAILABLE
                return 0.0
            link, partition, wait = self._io_pick(batch.topic, size, batch.key)
            if link is None:
                return wait
            if not self._io_write(link, partition, batch):  # never raises
                return _RECHECK_CONN
            batch.state = State.SENT
            if not self.connected:
                self._io_update_connected()
        except Exception as e:  # noqa: BLE001 - a bug before any write: drop, count
            self._log.exception("kafka_io_error", error=repr(e))
            batch.state = State.UNAVAILABLE
        return 0.0

    async def _io_wait_for_room(self, timeout: float) -> None:
        waiter = compat.Future()
        self._room_waiters.append(waiter)
        timer = self._net.call_later(timeout, lambda: self._wake(waiter))
        try:
            await waiter
        finally:
            self._net.cancel(timer)

    @staticmethod
    def _wake(waiter: Any) -> None:
        if not waiter.is_done:
            waiter.success(None)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, **kw)
