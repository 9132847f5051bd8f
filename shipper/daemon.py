"""Wires the stages together and owns the lifecycle: start, signals, reload, supervision of
the worker threads, drain, final ledger.

This is the only module that imports every stage. Each stage is built from its own slice of
the config; data flows one way: tailer -> queue -> sender. Signal handlers only record the
signal; the main loop acts on it:

- SIGTERM, SIGINT, SIGQUIT: stop (keep reading until the files are idle for
  ``shutdown.read_idle``, drain, write exact positions); a second SIGINT exits at once.
- SIGHUP: reload the config file (a bad one is refused and the old config kept).
- SIGUSR1: log the ledger and every open file's position as one line.
- SIGPIPE is ignored; every other signal whose default would end the process silently is
  logged and ignored.

The main loop also watches every worker thread: one that ends is reported by /health (503,
with its name), logged, and its stage is rebuilt after a short back-off; a stage that keeps
dying makes the daemon stop and exit 1, for the supervisor to restart it. It feeds the
systemd watchdog only while every worker thread is alive.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from shipper import __version__
from shipper.config import Config, load
from shipper.errors import ConfigError
from shipper.kafka import security
from shipper.kafka.sender import KafkaSender
from shipper.ledger import Ledger
from shipper.log import RateLimiter, configure, get_logger
from shipper.metrics import MetricsServer
from shipper.queue import DropQueue
from shipper.systemd import notify, watchdog_interval
from shipper.tail.registry import Registry
from shipper.tail.tailer import Tailer

__all__ = ["Daemon"]

_STOP = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT})
_OTHER_NAMES = (
    "SIGUSR2",
    "SIGALRM",
    "SIGVTALRM",
    "SIGPROF",
    "SIGIO",
    "SIGPWR",
    "SIGSTKFLT",
    "SIGXCPU",
    "SIGXFSZ",
)
#: Signals whose default action ends the process, that a daemon may be sent: logged, ignored.
_IGNORED = frozenset(
    {getattr(signal, n) for n in _OTHER_NAMES if hasattr(signal, n)}
    | set(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
)
_HANDLED = _STOP | {signal.SIGHUP, signal.SIGUSR1} | _IGNORED

_TICK = 1.0  # longest sleep of the main loop
_SLICE = 0.05  # how often a drain looks at the queue
_RESTART_WINDOW = 300.0  # seconds over which restarts of one stage are counted
_RESTART_LIMIT = 5  # more restarts than this within the window: exit 1
_RESTART_BACKOFF = 1.0  # first wait before a stage is rebuilt; doubles with each restart


class InjectedThreadFault(BaseException):
    """Test only (``SHIPPER_TEST_FAULTS``): raised inside a worker thread to end it the way
    an unexpected error would. Never raised unless that variable names the thread."""


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


class Daemon:
    """Builds every component from its own slice of the config and runs them."""

    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.log = get_logger()
        self.ledger = Ledger()
        self.registry = Registry(
            cfg.registry.path,
            cfg.registry.reserve,
            cfg.registry.forget_after,
            cfg.registry.max_entries,
            count=self.ledger.event,
        )
        self.queue = DropQueue(cfg.queue, self.ledger)
        self.sender = KafkaSender(cfg.kafka, self.queue, self.ledger, self.log, cfg.routes)
        self.tailer = self._new_tailer(cfg, None)
        self.metrics: MetricsServer | None = None
        self.state = "starting"
        self._signals: collections.deque[int] = collections.deque()
        self._stops = 0
        self._wake_r = self._wake_w = -1
        self._limiter = RateLimiter(10.0)
        self._watchdog = watchdog_interval()
        self._last_ping = 0.0
        self._faults = list(cfg.test_faults)
        self._dead: dict[str, float] = {}  # stage -> when its thread was found dead
        self._restarts: dict[str, list[float]] = {}
        self._excepthook = threading.excepthook

    def _new_tailer(self, cfg: Config, fresh: set[int] | None) -> Tailer:
        return Tailer(
            cfg.inputs,
            cfg.tail,
            registry=self.registry,
            offer=self.queue.offer,
            put=self.queue.put,
            wait_for_room=self.queue.wait_for_room,
            ledger=self.ledger,
            log=self.log,
            fresh_inputs=fresh,
        )

    # -- signals: handlers only record them ---------------------------------------------
    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum in _STOP:
            self._stops += 1
            if self._stops > 1 and signum == signal.SIGINT:
                os._exit(130)  # a second Ctrl-C means now, as with uvicorn and gunicorn
        self._signals.append(signum)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        for sig in _HANDLED:
            with contextlib.suppress(OSError, ValueError):  # not catchable here
                signal.signal(sig, self._on_signal)
        threading.excepthook = self._thread_crashed

    def _uninstall_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        threading.excepthook = self._excepthook

    @contextlib.contextmanager
    def _masked(self) -> Iterator[None]:
        """Start threads inside this: they (and the threads they start) block the handled
        signals, so those always reach the main thread."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)

    def _wait(self, timeout: float) -> None:
        """Sleep until ``timeout`` passes or a signal arrives."""
        try:
            ready, _, _ = select.select([self._wake_r], [], [], max(timeout, 0.0))
        except InterruptedError:
            return
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass

    def _thread_crashed(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "?"
        self.log.error(
            "thread_crashed",
            thread=name,
            error=repr(args.exc_value),
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )

    # -- health and supervision ---------------------------------------------------------
    def _stages(self) -> dict[str, list[threading.Thread]]:
        """Every supervised worker thread, by the stage that is rebuilt when it dies."""
        stages: dict[str, list[threading.Thread]] = {"tailer": self.tailer.threads()}
        if self.sender.thread is not None:
            stages["sender"] = [self.sender.thread]
        if self.metrics is not None:
            stages["metrics"] = [self.metrics.thread]
        return stages

    def dead_threads(self) -> list[str]:
        """Names of worker threads that ended while they should run."""
        return [t.name for ts in self._stages().values() for t in ts if not t.is_alive()]

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
        if self.state == "running":
            dead = self.dead_threads()
            problems = self.tailer.problems()
            if dead:
                doc["status"] = "failed"
                doc["dead_threads"] = dead
            elif problems:
                doc["status"] = "degraded"
            if problems:
                doc["problems"] = problems
        ok = doc["status"] in ("running", "degraded", "reloading")
        return (200 if ok else 503), doc

    def _supervise(self) -> bool:
        """Rebuild stages whose threads died (after a back-off); False to give up."""
        now = time.monotonic()
        for stage, threads in self._stages().items():
            dead = [t.name for t in threads if not t.is_alive()]
            if not dead:
                self._dead.pop(stage, None)
                continue
            if stage not in self._dead:
                self._dead[stage] = now
                self.ledger.event("threads_died", len(dead))
                self.log.error("thread_died", threads=dead, stage=stage)
            recent = [t for t in self._restarts.get(stage, []) if now - t < _RESTART_WINDOW]
            self._restarts[stage] = recent
            if len(recent) >= _RESTART_LIMIT:
                self.log.error(
                    "stage_failed",
                    stage=stage,
                    restarts=len(recent),
                    window=_RESTART_WINDOW,
                    action="exiting for the supervisor to restart the daemon",
                )
                return False
            if now - self._dead[stage] >= _RESTART_BACKOFF * 2 ** len(recent):
                recent.append(now)
                self._restart(stage)
                self._dead.pop(stage, None)
        return True

    def _restart(self, stage: str) -> None:
        self.ledger.event("stages_restarted")
        self.log.warning("stage_restarting", stage=stage)
        if stage == "tailer":
            old = self.tailer
            old.stop()  # exact positions: lines read but not handed on are read again
            self.tailer = self._new_tailer(self.cfg, set())
            with self._masked():
                self.tailer.start()
        elif stage == "sender":
            dropped = self.queue.drop_taken("sender_error")
            self.sender.abandon()
            if dropped:
                self.log.warning("lines_dropped", reason="sender_error", count=dropped)
            unconfirmed = self.ledger.unconfirm_in_flight("sender_error")
            if unconfirmed:
                self.log.warning("lines_unconfirmed", reason="sender_error", count=unconfirmed)
            self.sender = KafkaSender(
                self.cfg.kafka, self.queue, self.ledger, self.log, self.cfg.routes
            )
            with self._masked():
                self.sender.start()
        elif stage == "metrics" and self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
            with self._masked():
                self._start_metrics(self.cfg)
        self.log.info("stage_restarted", stage=stage)

    def _start_metrics(self, cfg: Config) -> None:
        if cfg.metrics.enabled:
            self.metrics = MetricsServer(cfg.metrics.listen, self.ledger, self.health)
            self.metrics.start()

    def _ping_watchdog(self) -> None:
        """WATCHDOG=1 while the main loop turns and every worker thread is alive."""
        if self._watchdog is None or self.dead_threads():
            return
        now = time.monotonic()
        if now - self._last_ping >= self._watchdog / 4:
            notify("WATCHDOG=1")
            self._last_ping = now

    def _turn(self, timeout: float) -> None:
        """One turn of a waiting loop: sleep a little, keep the watchdog fed."""
        self._ping_watchdog()
        self._wait(timeout)

    # -- running ------------------------------------------------------------------------
    def run(self) -> int:
        """Run until a stop signal; return the process exit code.

        Raises RegistryLockedError before anything is read or sent when another process
        owns the registry.
        """
        self.registry.lock()
        self._install_signals()
        try:
            with self._masked():
                self._start_metrics(self.cfg)
                self.sender.start()
                self.tailer.start()
            self.state = "running"
            notify("READY=1")
            self.log.info(
                "shipper_started",
                version=__version__,
                pid=os.getpid(),
                topics=sorted({r.topic for r in self.cfg.routes} or {self.cfg.kafka.topic}),
                bootstrap=self.cfg.kafka.bootstrap_servers,
                inputs=[i.paths for i in self.cfg.inputs],
                metrics=self.metrics.address if self.metrics else None,
                registry=str(self.registry.path),
                security=security.describe(self.cfg.kafka.security),
            )
            for warning in self.cfg.warnings:  # e.g. TLS host name verification turned off
                self.log.warning("config_warning", warning=warning)
            return self._loop()
        finally:
            self._uninstall_signals()
            self.registry.release()

    def _loop(self) -> int:
        next_stats = time.monotonic() + self.cfg.log.stats_interval
        while True:
            tick = min(_TICK, self._watchdog / 4 if self._watchdog else _TICK)
            self._turn(min(tick, max(next_stats - time.monotonic(), 0.0)))
            try:
                while self._signals:
                    sig = self._signals.popleft()
                    if sig in _STOP:
                        return self.shutdown(sig)
                    self._on(sig)
                if not self._supervise():
                    return self.shutdown(None, code=1)
            except Exception as exc:  # never a traceback: stop cleanly, exit 1
                self.log.exception("daemon_error", error=repr(exc))
                return self.shutdown(None, code=1)
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + self.cfg.log.stats_interval
                self.log.info("stats", **self.ledger.snapshot().as_log())

    def _on(self, sig: int) -> None:
        if sig == signal.SIGHUP:
            self.reload()
        elif sig == signal.SIGUSR1:
            self.dump_state()
        elif sig == signal.SIGUSR2 and self._faults:
            self._break_threads()
        else:
            self.ledger.event("signals_ignored")
            self._limiter.warn(self.log, "signal_ignored", _signame(sig), signal=_signame(sig))

    def dump_state(self) -> None:
        """Log the ledger and every open file's position as one line (SIGUSR1)."""
        snap = self.ledger.snapshot()
        self.log.info(
            "state",
            **snap.as_log(),
            events=snap.events,
            queue_lines=self.queue.lines,
            queue_bytes=self.queue.nbytes,
            kafka_connected=self.sender.connected,
            threads={t.name: t.is_alive() for ts in self._stages().values() for t in ts},
            **self.tailer.state(),
        )

    def _break_threads(self) -> None:
        """Test only: end each thread named in ``SHIPPER_TEST_FAULTS`` once."""
        names, self._faults = self._faults, []
        for t in threading.enumerate():
            if t.name in names and t.ident is not None:
                self.log.warning("test_fault_injected", thread=t.name)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(t.ident), ctypes.py_object(InjectedThreadFault)
                )

    # -- reload -------------------------------------------------------------------------
    def reload(self) -> None:
        """Read the config file again and apply it: stop reading, drain, write exact
        positions, rebuild every stage, go on from the saved positions. A config that is
        invalid (or changes what cannot change) is refused and the old one kept."""
        started = time.monotonic()
        self.log.info("reload_started", config=self.config_path)
        if self.config_path is None:
            self._reload_failed(["<config>: the daemon was not started from a file"])
            return
        try:
            new = load(self.config_path)
        except ConfigError as err:
            self._reload_failed(err.problems)
            return
        if new.registry.path != self.cfg.registry.path:
            self._reload_failed(
                ["registry.path: cannot change while running (restart the daemon to move it)"]
            )
            return
        metrics = self.metrics
        listen_changed = (new.metrics.enabled, new.metrics.listen) != (
            self.cfg.metrics.enabled,
            self.cfg.metrics.listen,
        )
        new_metrics: MetricsServer | None = None
        if listen_changed and new.metrics.enabled:
            try:  # bind first: a port that is taken refuses the reload, nothing changed yet
                new_metrics = MetricsServer(new.metrics.listen, self.ledger, self.health)
            except OSError as exc:
                self._reload_failed([f"metrics.listen: cannot listen on it: {exc.strerror}"])
                return
        self.state = "reloading"
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")
        old_paths = {i.paths for i in self.cfg.inputs}
        fresh = {i for i, inp in enumerate(new.inputs) if inp.paths not in old_paths}
        dropped = self._drain_for_reload()
        configure(new.log.level, new.log.format)
        self.log = get_logger()
        self.cfg = new
        reg = self.registry
        reg.reserve_bytes = new.registry.reserve
        reg.forget_after = new.registry.forget_after
        reg.max_entries = new.registry.max_entries
        self.queue = DropQueue(new.queue, self.ledger)
        self.sender = KafkaSender(new.kafka, self.queue, self.ledger, self.log, new.routes)
        self.tailer = self._new_tailer(new, fresh)
        with self._masked():
            if listen_changed:
                if metrics is not None:
                    metrics.stop()
                self.metrics = new_metrics
                if new_metrics is not None:
                    new_metrics.start()
            self.sender.start()
            self.tailer.start()
        self._dead.clear()
        self.state = "running"
        notify("READY=1")
        self.ledger.event("reloads")
        self.log.info(
            "reload_complete",
            seconds=round(time.monotonic() - started, 3),
            dropped=dropped,
            topics=sorted({r.topic for r in new.routes} or {new.kafka.topic}),
            inputs=[i.paths for i in new.inputs],
            added_inputs=sorted(fresh),
            metrics=self.metrics.address if self.metrics else None,
            security=security.describe(new.kafka.security),
        )
        for warning in new.warnings:
            self.log.warning("config_warning", warning=warning)

    def _reload_failed(self, problems: list[str]) -> None:
        self.ledger.event("reload_failed")
        self.log.error(
            "reload_failed",
            config=self.config_path,
            problems=problems,
            action="keeping the running config",
        )

    def _drain_for_reload(self) -> int:
        """Stop reading, save exact positions, let the sender empty the queue (up to
        ``drain_timeout``), then stop it; return the lines dropped as ``reload``."""
        deadline = time.monotonic() + self.cfg.shutdown.drain_timeout
        self.tailer.stop()
        self._drain_until(deadline, lambda: self.ledger.snapshot().queued_lines == 0)
        self.sender.stop(max(deadline, time.monotonic()))
        left = self.queue.drop_all("reload") + self.ledger.drop_queued("reload")
        if left:
            self.log.warning("lines_dropped", reason="reload", count=left)
        unconfirmed = self.ledger.unconfirm_in_flight("reload")
        if unconfirmed:
            self.log.warning("lines_unconfirmed", reason="reload", count=unconfirmed)
        return left

    def _drain_until(self, deadline: float, done: Callable[[], bool]) -> None:
        while not done() and time.monotonic() < deadline:
            self._turn(min(_SLICE, deadline - time.monotonic()))

    # -- stopping -----------------------------------------------------------------------
    def shutdown(self, signum: int | None = None, code: int = 0) -> int:
        """Stop in pipeline order: keep reading until the files are idle for ``read_idle``,
        stop reading, then drain to Kafka until the deadline; return ``code``."""
        cfg = self.cfg.shutdown
        self.state = "draining"
        notify("STOPPING=1")
        started = time.monotonic()
        deadline = started + cfg.drain_timeout
        self.log.info(
            "shutdown_started",
            signal=_signame(signum) if signum is not None else None,
            drain_timeout=cfg.drain_timeout,
            read_idle=cfg.read_idle,
            queued=self.ledger.snapshot().queued_lines,
        )
        tailer = self.tailer
        if cfg.read_idle > 0 and tailer.thread is not None and tailer.thread.is_alive():
            # Lines an app writes while it stops (its pod, its unit) still ship. Reading
            # leaves part of the drain timeout to the queue: what is read must still go out.
            read_for = max(cfg.drain_timeout - cfg.read_idle, cfg.drain_timeout / 2)
            self._drain_until(
                started + read_for,
                lambda: (
                    time.monotonic() - tailer.last_read >= cfg.read_idle and not tailer.behind()
                ),
            )
        tailer.stop()
        self.sender.stop(max(deadline, time.monotonic()))
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
            "shutdown_complete",
            seconds=round(time.monotonic() - started, 3),
            exit_code=code,
            **snap.as_log(),
        )
        return code
