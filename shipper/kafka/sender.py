"""The sender thread: take chunks from the queue, split them into batches, encode, hand each
batch to the IO thread to write once, and settle the lines in the ledger.

take -> split -> encode -> write -> settle. One thread does all of it; kafka-python's IO
thread (driven by ``client.Client``) owns the sockets, and settles written lines as
confirmed or unconfirmed when fences answer or connections break. A batch is written to at
most one connection, once; if no leader connection is ready within ``unavailable_timeout``
it is dropped (``kafka_unavailable``). A take never mixes topics: each input's lines go to
its route's topic, in batches no larger than that topic accepts.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable, Hashable, Sequence
from itertools import compress
from typing import TYPE_CHECKING, Any, Final

from shipper.chunk import Chunk
from shipper.config import Route
from shipper.kafka.client import Batch, Books, Client, State
from shipper.kafka.encode import HEADER_SIZE, LINE_ROOM, RECORD_OVERHEAD, compression_code
from shipper.kafka.records import Records
from shipper.log import RateLimiter

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from shipper.chunk import Source
    from shipper.config import KafkaConfig
    from shipper.ledger import Ledger
    from shipper.queue import DropQueue

__all__ = ["KafkaSender"]

_IDLE_WAIT: Final = 0.25  # take() timeout while the queue is empty (stop() wakes it early)
_GRACE: Final = 2.0  # extra wait for the IO thread's verdict before abandoning a batch
_CRASH_BACKOFF: Final = 1.0
_WARN_INTERVAL: Final = 10.0


class KafkaSender:
    """Takes chunks from the queue, encodes record batches and writes them with acks=0.

    ``routes[i]`` says where input ``i``'s lines go (its topic) and what happens to a line
    too long for that topic; without routes every line goes to ``cfg.topic``.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        queue: DropQueue,
        ledger: Ledger,
        log: FilteringBoundLogger,
        routes: Sequence[Route] = (),
    ) -> None:
        self._compression = compression_code(cfg.compression)  # the config checked it
        self._records = Records(cfg, routes, self._compression)
        self._cfg = cfg
        self._default = Route(topic=cfg.topic, format=cfg.format, fields=dict(cfg.fields))
        self._routes = tuple(routes) or (self._default,)
        self._topics = tuple(dict.fromkeys(r.topic for r in self._routes))
        self._queue = queue
        self._ledger = ledger
        self._books = Books(ledger)
        self._log = log
        self._limiter = RateLimiter(_WARN_INTERVAL)
        self._lock = threading.RLock()  # batch and link state, shared with the IO thread
        self._stop_deadline = [float("inf")]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._outstanding: Batch | None = None
        # Lines taken from the queue and not yet settled (written or dropped) in the ledger.
        self._held_lines = 0
        self._held_bytes = 0
        self._raw_budget = cfg.batch_max_bytes - HEADER_SIZE
        self._crashes = 0
        self._dropped_unavailable = 0

    # -- public ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while every topic has a ready connection to one of its leaders."""
        client = self._client
        return client is not None and client.connected and client.alive

    @property
    def auth_failure(self) -> str | None:
        """Why the brokers refuse us (``kafka_auth_failed``'s reason), or None."""
        client = self._client
        return client.auth_failure if client is not None else None

    def in_flight_bytes(self) -> int:
        """Bytes written to Kafka connections and not yet confirmed by a fence (bounded per
        connection by ``max_in_flight_bytes``)."""
        client = self._client
        return client.in_flight_bytes() if client is not None else 0

    def health(self) -> dict[str, Any]:
        """The Kafka part of /health: overall state and each broker's."""
        client = self._client
        if client is None or not client.alive:
            return {"state": "unavailable", "brokers": {}}
        return client.health()

    def start(self) -> None:
        """Start the sender thread and return at once; it connects in the background."""
        if self._thread is not None:
            raise RuntimeError("KafkaSender already started")
        self._thread = threading.Thread(target=self._run, name="shipper-sender", daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Drain the queue until empty or ``deadline`` (monotonic), fence every connection and
        wait for the answers until ``deadline``, close, return."""
        self._stop_deadline[0] = deadline
        self._stopping.set()
        self._queue.wake()
        thread = self._thread
        if thread is None:
            return
        thread.join(max(0.0, deadline - time.monotonic()) + _GRACE)
        if thread.is_alive():
            # The caller settles what we still hold (queued and in flight, as ``shutdown``);
            # neither we nor the IO thread may touch the ledger any more.
            self._books.close()
            self._log.error("sender_stop_timeout", held_lines=self._held_lines)

    # -- sender thread -----------------------------------------------------------------------
    def _run(self) -> None:
        self._log.info(
            "sender_started",
            topics=list(self._topics),
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
                self._client.close(self._stop_deadline[0])  # final fences, then shutdown
        except Exception as e:  # noqa: BLE001
            self._log.exception("sender_close_error", error=repr(e))
        self._log.info("sender_stopped")

    def _group(self) -> Callable[[Source], Hashable] | None:
        """What a take must not mix: topics, and what records must not mix (formats, keys)."""
        topic_of = [r.topic for r in self._routes]
        default = self._default.topic
        records = self._records.group

        def topic(source: Source) -> str:
            i = source.input
            return topic_of[i] if 0 <= i < len(topic_of) else default

        if len(self._topics) == 1:
            return records
        if records is None:
            return topic
        return lambda source: (topic(source), records(source))

    def _loop(self) -> None:
        cfg = self._cfg
        take = self._queue.take
        group = self._group()
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
            linger = 0.0 if draining else cfg.linger
            chunks = take(cfg.batch_max_lines, self._raw_budget, idle, linger, group)
            if not chunks:
                self._finish_outstanding()
                if draining:
                    return  # the queue is empty
                continue
            if not self._ship(client, chunks, draining):
                return  # the stop deadline passed: the rest is settled as ``shutdown``

    def _ship(self, client: Client, chunks: list[Chunk], draining: bool) -> bool:
        """Encode one take into batches of its topic's size and submit each; False when the
        stop deadline passed before all were submitted."""
        cfg = self._cfg
        i = chunks[0].source.input
        route = self._routes[i] if 0 <= i < len(self._routes) else self._default
        topic = route.topic
        n = sum(len(c.lines) for c in chunks)
        nbytes = sum(c.nbytes for c in chunks)
        self._held_lines += n
        self._held_bytes += nbytes
        max_bytes = client.batch_limit(topic, time.monotonic() + cfg.unavailable_timeout)
        if max_bytes < cfg.batch_max_bytes:  # the tailer cut lines for a larger limit
            chunks = self._fit_lines(chunks, max_bytes, route)
        self._adapt_budget(max_bytes, n, nbytes)
        for batch in self._records.batches(chunks, max_bytes, cfg.batch_max_lines):
            if draining and time.monotonic() >= self._stop_deadline[0]:
                return False
            if batch.payload is None:  # one record too long for any batch
                self._settle_dropped("line_too_long", batch.lines, batch.nbytes)
                self._warn(
                    "line_too_long", topic=topic, line_bytes=batch.nbytes, batch_max_bytes=max_bytes
                )
                continue
            self._finish_outstanding()  # at most one batch waits while we encode the next
            self._submit(
                client,
                Batch(
                    batch.payload,
                    batch.lines,
                    batch.nbytes,
                    0.0,
                    key=batch.partition,
                    topic=topic,
                ),
            )
        return True

    def _fit_lines(self, chunks: list[Chunk], max_bytes: int, route: Route) -> list[Chunk]:
        """Lines too long for this topic's batch limit (less ``LINE_ROOM`` and the records'
        overhead) follow the input's ``long_lines``: cut to fit (the bytes cut count as
        ``line_too_long`` bytes; event ``lines_truncated``) or dropped (``line_too_long``).
        Per chunk, and only for topics whose limit is below ``batch_max_bytes``."""
        # LINE_ROOM holds a raw record's overhead; an envelope or headers need more.
        keep = max(1, max_bytes - LINE_ROOM - (self._records.overhead - RECORD_OVERHEAD))
        out = []
        for c in chunks:
            if not c.lines or max(map(len, c.lines)) <= keep:
                out.append(c)
                continue
            starts = c.starts()
            fits = [len(line) <= keep for line in c.lines]
            if route.long_lines == "truncate":
                lines = [x if ok else x[:keep] for x, ok in zip(c.lines, fits, strict=True)]
                offsets = array("q", starts)
                cut = fits.count(False)
                self._ledger.event("lines_truncated", cut)
                self._warn("line_truncated", by="sender", topic=route.topic, count=cut, kept=keep)
            else:
                lines = list(compress(c.lines, fits))
                offsets = array("q", compress(starts, fits))
                self._warn(
                    "line_too_long",
                    topic=route.topic,
                    count=len(c.lines) - len(lines),
                    batch_max_bytes=max_bytes,
                )
            left = sum(map(len, lines))
            self._settle_dropped("line_too_long", len(c.lines) - len(lines), c.nbytes - left)
            if lines:
                out.append(Chunk(lines, left, c.source, c.read_at, offsets[0], 0, offsets))
        return out

    def _adapt_budget(self, max_bytes: int, n: int, nbytes: int) -> None:
        # Take about one batch worth of raw bytes, so a take rarely splits into two batches.
        room = max_bytes - HEADER_SIZE
        self._raw_budget = max(1, room * nbytes // (nbytes + self._records.overhead * n))

    def _ensure_client(self) -> Client:
        client = self._client
        if client is not None and client.alive:
            return client
        if client is not None:
            self._log.error("kafka_io_crashed")
            self._finish_outstanding()
            client.close(time.monotonic(), reason="connection_closed")
            self._client = None
        client = Client(
            self._cfg,
            self._topics,
            self._books,
            self._log,
            lock=self._lock,
            limiter=self._limiter,
            stop_deadline=self._stop_deadline,
            on_confirmed=self._queue.delivered,
        )
        self._client = client
        client.start()
        return client

    def _submit(self, client: Client, batch: Batch) -> None:
        batch.deadline = time.monotonic() + self._cfg.unavailable_timeout
        self._outstanding = batch
        try:
            client.submit(batch)
        except Exception as e:  # noqa: BLE001 - IO loop closed or crashed: the batch never left
            self._log.error("kafka_submit_error", error=repr(e))
            with self._lock:
                batch.state = State.UNAVAILABLE
            batch.done.set()

    def _finish_outstanding(self) -> None:
        batch = self._outstanding
        if batch is None:
            return
        wait = min(batch.deadline, self._stop_deadline[0]) - time.monotonic() + _GRACE
        if not batch.done.wait(max(0.0, wait)):
            with self._lock:
                if batch.state is State.WAITING:
                    batch.state = State.ABANDONED
        self._outstanding = None
        if batch.state is State.SENT:  # the IO thread moved it to in flight in the ledger
            self._held_lines -= batch.lines
            self._held_bytes -= batch.nbytes
        elif batch.state is State.SHUTDOWN:
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
                abandoned=batch.state is State.ABANDONED,
            )

    def _settle_dropped(self, reason: str, lines: int, nbytes: int) -> None:
        self._held_lines -= lines
        self._held_bytes -= nbytes
        self._books.dropped(reason, lines, nbytes)

    def _abort_held(self, reason: str) -> None:
        """Settle everything taken and still unsettled (the outstanding batch first)."""
        if self._outstanding is not None:
            self._finish_outstanding()
        if self._held_lines or self._held_bytes:
            self._log.warning("sender_lines_dropped", reason=reason, lines=self._held_lines)
            self._settle_dropped(reason, self._held_lines, self._held_bytes)

    def _warn(self, event: str, **kw: Any) -> None:
        self._limiter.warn(self._log, event, **kw)
