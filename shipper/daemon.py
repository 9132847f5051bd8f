"""Wires the stages together and owns the lifecycle: start, signals, drain, final ledger.

This is the only module that imports every stage. Each stage is built from its own slice of
the config; data flows one way: tailer -> queue -> sender.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from shipper import __version__
from shipper.config import Config
from shipper.kafka import security
from shipper.kafka.sender import KafkaSender
from shipper.ledger import Ledger
from shipper.log import get_logger
from shipper.metrics import MetricsServer
from shipper.queue import DropQueue
from shipper.systemd import notify
from shipper.tail.registry import Registry
from shipper.tail.tailer import Tailer

__all__ = ["Daemon"]

_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class Daemon:
    """Builds every component from its own slice of the config and runs them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.log = get_logger()
        self.ledger = Ledger()
        self.queue = DropQueue(cfg.queue, self.ledger)
        self.registry = Registry(cfg.registry.path, cfg.registry.reserve, cfg.registry.forget_after)
        self.sender = KafkaSender(cfg.kafka, self.queue, self.ledger, self.log, cfg.routes)
        self.tailer = Tailer(
            cfg.inputs,
            cfg.tail,
            registry=self.registry,
            offer=self.queue.offer,
            put=self.queue.put,
            wait_for_room=self.queue.wait_for_room,
            ledger=self.ledger,
            log=self.log,
        )
        self.metrics: MetricsServer | None = None
        self._stop = threading.Event()
        self._signals = 0
        self.state = "starting"

    # Signal handlers only record state; the main loop acts on it.
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1 and signum == signal.SIGINT:
            os._exit(130)  # a second Ctrl-C means now, as with uvicorn and gunicorn
        self._stop.set()

    def health(self) -> tuple[int, dict[str, Any]]:
        """HTTP status and body for /health."""
        kafka = self.sender.health()
        doc: dict[str, Any] = {
            "status": self.state,
            "kafka": kafka["state"],
            "kafka_connected": self.sender.connected,
            "kafka_brokers": kafka["brokers"],
            "kafka_auth_failed": self.sender.auth_failure,
            "registry_writable": not self.tailer.degraded,
        }
        if "error" in kafka:
            doc["kafka_error"] = kafka["error"]
        if self.state == "running" and self.tailer.degraded:
            doc["status"] = "degraded"
        return (200 if self.state == "running" else 503), doc

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        cfg = self.cfg
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Python runs handlers on the main thread only, and a signal the kernel hands to another
        # thread does not wake the main thread from a join. So every thread we start (and every
        # thread those start) inherits a mask that blocks the stop signals: they reach the main
        # thread, whose waits they interrupt at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            if cfg.metrics.enabled:
                self.metrics = MetricsServer(cfg.metrics.listen, self.ledger, self.health)
                self.metrics.start()
            self.sender.start()
            self.tailer.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        self.state = "running"
        notify("READY=1")
        self.log.info(
            "shipper_started",
            version=__version__,
            pid=os.getpid(),
            topics=sorted({r.topic for r in cfg.routes} or {cfg.kafka.topic}),
            bootstrap=cfg.kafka.bootstrap_servers,
            inputs=[i.paths for i in cfg.inputs],
            metrics=self.metrics.address if self.metrics else None,
            security=security.describe(cfg.kafka.security),
        )
        for warning in cfg.warnings:  # e.g. TLS host name verification turned off
            self.log.warning("config_warning", warning=warning)
        interval = cfg.log.stats_interval
        next_stats = time.monotonic() + interval
        while not self._stop.wait(min(1.0, interval)):
            if time.monotonic() >= next_stats:
                next_stats += interval
                self.log.info("stats", **self.ledger.snapshot().as_log())
        return self.shutdown()

    def shutdown(self) -> int:
        """Stop in pipeline order: reading, then drain to Kafka until the deadline."""
        self.state = "draining"
        notify("STOPPING=1")
        started = time.monotonic()
        deadline = started + self.cfg.shutdown.drain_timeout
        self.log.info(
            "shutdown_started",
            drain_timeout=self.cfg.shutdown.drain_timeout,
            queued=self.ledger.snapshot().queued_lines,
        )
        self.tailer.stop()
        self.sender.stop(deadline)
        # Whatever is still queued, or held by a sender that gave up, is dropped now; what is
        # still in flight (written, no fence answered) is unconfirmed. The warnings give the
        # ledger's own totals for the reason, so they and shutdown_complete always agree.
        self.queue.drop_all("shutdown")
        self.ledger.drop_queued("shutdown")
        self.ledger.unconfirm_in_flight("shutdown")
        snap = self.ledger.snapshot()
        dropped = snap.dropped_lines.get("shutdown", 0)
        unconfirmed = snap.unconfirmed_lines.get("shutdown", 0)
        if dropped:
            self.log.warning("lines_dropped", reason="shutdown", count=dropped)
        if unconfirmed:
            self.log.warning("lines_unconfirmed", reason="shutdown", count=unconfirmed)
        if self.metrics is not None:
            self.metrics.stop()
        self.log.info(
            "shutdown_complete", seconds=round(time.monotonic() - started, 3), **snap.as_log()
        )
        return 0
