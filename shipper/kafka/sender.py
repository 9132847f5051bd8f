"""The sender thread: take chunks from the queue, split them into batches, encode, hand each
batch to the IO thread to write once, and settle the lines in the ledger.

take -> split -> encode -> write -> settle. One thread does all of it; kafka-python's IO
thread (driven by ``client.Client``) owns the sockets. A batch is written to at most one
connection, once; if no leader connection is ready within ``unavailable_timeout`` it is
dropped (``kafka_unavailable``).
"""

from __future__ import annotations

import threading
import time
import zlib
from itertools import chain
from typing import TYPE_CHECKING, Any, Final

from shipper.kafka.client import Batch, Client, State
from shipper.kafka.encode import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    batch_size,
    compression_code,
    encode_batch,
    split_batches,
)
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


def _by_path(source: Source) -> str:
    return source.path


class KafkaSender:
    """Takes chunks from the queue, encodes record batches and writes them with acks=0."""

    def __init__(
        self, cfg: KafkaConfig, queue: DropQueue, ledger: Ledger, log: FilteringBoundLogger
    ) -> None:
        self._compression = compression_code(cfg.compression)  # the config checked it
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
        self._client: Client | None = None
        self._outstanding: Batch | None = None
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

    @property
    def auth_failure(self) -> str | None:
        """Why the brokers refuse us (``kafka_auth_failed``'s reason), or None."""
        client = self._client
        return client.auth_failure if client is not None else None

    def buffered_bytes(self) -> int:
        """Bytes handed to Kafka connections and still in user space (bounded per connection
        by ``max_in_flight_bytes``)."""
        client = self._client
        return client.buffered_bytes() if client is not None else 0

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
        by_file = cfg.key == "path"
        group = _by_path if by_file else None
        key: int | None = None
        if cfg.key == "host":
            key = zlib.crc32(cfg.host.encode())
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
            chunks = take(max_lines, self._raw_budget, idle, 0.0 if draining else cfg.linger, group)
            if not chunks:
                self._finish_outstanding()
                if draining:
                    return  # the queue is empty
                continue
            if len(chunks) == 1:
                lines, nbytes = chunks[0].lines, chunks[0].nbytes
            else:
                lines = list(chain.from_iterable(c.lines for c in chunks))
                nbytes = sum(c.nbytes for c in chunks)
            if by_file:
                key = zlib.crc32(chunks[0].source.path.encode())
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
                self._submit(client, Batch(payload, len(run), raw, 0.0, key))

    def _adapt_budget(self, n: int, nbytes: int) -> None:
        # Take about one batch worth of raw bytes, so a take rarely splits into two batches.
        room = self._cfg.batch_max_bytes - HEADER_SIZE
        self._raw_budget = max(1, room * nbytes // (nbytes + RECORD_OVERHEAD * n))

    def _ensure_client(self) -> Client:
        client = self._client
        if client is not None and client.alive:
            return client
        if client is not None:
            self._log.error("kafka_io_crashed")
            self._finish_outstanding()
            client.close(time.monotonic())
            self._client = None
        client = Client(
            self._cfg,
            self._log,
            self._lock,
            self._limiter,
            self._stop_deadline,
            count=self._ledger.event,
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
        if batch.state is State.SENT:
            self._held_lines -= batch.lines
            self._held_bytes -= batch.nbytes
            self._queue.delivered()
            with self._books:
                if not self._books_closed:
                    self._ledger.sent(batch.lines, batch.nbytes)
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
