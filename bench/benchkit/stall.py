"""Stall scenario: freeze the broker (SIGSTOP) under a fast writer; watch memory and the ledger."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from benchkit.broker import Broker
from benchkit.latency import wait_total
from benchkit.live import LiveShipper, running_shipper, start_writer, writer_result
from benchkit.options import Options
from benchkit.procs import proc_usage, rss_kib
from benchkit.programs import RunSpec
from benchkit.shipmetrics import LedgerView, scrape

__all__ = ["QUEUE_MAX_BYTES", "QUEUE_MAX_LINES", "run_stall"]

QUEUE_MAX_BYTES = "64MiB"
# Lines are ~100 bytes here: with the default max_lines (100,000, about 10 MB) the line bound
# would bind first and the byte bound under test would never be reached.
QUEUE_MAX_LINES = 1_000_000
_SAMPLE = 0.2


@dataclass
class _Freezer:
    """SIGSTOPs the broker at `at` seconds and SIGCONTs it `hold` seconds later."""

    pid: int
    at: float
    hold: float
    stopped_at: float | None = None
    resumed_at: float | None = None

    def tick(self, t: float) -> None:
        if self.stopped_at is None and t >= self.at:
            os.kill(self.pid, signal.SIGSTOP)
            self.stopped_at = t
        elif self.stopped_at is not None and self.resumed_at is None and t >= self.at + self.hold:
            self.resume(t)

    def resume(self, t: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
        self.resumed_at = t


@dataclass
class _Samples:
    t0: float = field(default_factory=time.monotonic)
    rss: list[tuple[float, int]] = field(default_factory=list)

    def take(self, pid: int) -> float:
        t = time.monotonic() - self.t0
        kib = rss_kib(pid)
        if kib is not None:
            self.rss.append((round(t, 2), kib))
        return t


def _drive(
    sh: LiveShipper, writer: subprocess.Popen[bytes], freezer: _Freezer, samples: _Samples
) -> None:
    """Sample RSS every 0.2 s while the writer runs, freezing/thawing the broker on time."""
    try:
        while writer.poll() is None:
            freezer.tick(samples.take(sh.pid))
            time.sleep(_SAMPLE)
    finally:
        if freezer.stopped_at is not None and freezer.resumed_at is None:
            freezer.resume(time.monotonic() - samples.t0)


def _settle(sh: LiveShipper, written: int, samples: _Samples, timeout: float) -> LedgerView | None:
    """Keep sampling until every written line is read and has reached its final state
    (queued and in flight empty), or timeout."""
    deadline = time.monotonic() + timeout
    view = scrape(sh.metrics_url)
    while time.monotonic() < deadline:
        samples.take(sh.pid)
        view = scrape(sh.metrics_url)
        if view and view.read >= written and view.queued == 0 and view.in_flight == 0:
            break
        time.sleep(_SAMPLE)
    return view


def _max_mib(rss: list[tuple[float, int]], until: float | None = None) -> float | None:
    """Largest sampled RSS in MiB (only samples before `until`, if given)."""
    kib = [k for t, k in rss if until is None or t < until]
    return round(max(kib) / 1024, 1) if kib else None


def _timeline(rss: list[tuple[float, int]]) -> list[list[float]]:
    """About one RSS sample per second, in MiB, for the JSON report."""
    out: list[list[float]] = []
    for t, kib in rss:
        if not out or t - out[-1][0] >= 1.0:
            out.append([t, round(kib / 1024, 1)])
    return out


def _report(
    opts: Options,
    *,
    written: int,
    delivered: int,
    view: LedgerView | None,
    samples: _Samples,
    peak_kib: int | None,
    freezer: _Freezer,
) -> dict[str, Any]:
    return {
        "rate": opts.stall_rate,
        "before_s": opts.stall_before,
        "stall_s": opts.stall,
        "after_s": opts.stall_after,
        "queue_max_bytes": QUEUE_MAX_BYTES,
        "queue_max_lines": QUEUE_MAX_LINES,
        "rss_before_stall_mib": _max_mib(samples.rss, until=freezer.stopped_at),
        "broker_stopped_at_s": freezer.stopped_at,
        "broker_resumed_at_s": freezer.resumed_at,
        "written": written,
        "delivered": delivered,
        "peak_rss_mib": round(peak_kib / 1024, 1) if peak_kib else None,
        "max_sampled_rss_mib": _max_mib(samples.rss),
        "ledger": view.as_dict() if view else None,
        "balanced": view.balanced if view else None,
        # confirmed <= at the broker <= confirmed + unconfirmed: the ledger brackets the topic.
        "bracketed": (
            view.confirmed <= delivered <= view.confirmed + sum(view.unconfirmed.values())
            if view
            else None
        ),
        "rss_timeline_mib": _timeline(samples.rss),
    }


def run_stall(broker: Broker, opts: Options) -> dict[str, Any]:
    """Write at opts.stall_rate, freeze the broker for opts.stall s, report RSS and ledger."""
    pid = broker.pid()
    if pid is None:
        return {"skipped": "needs the bench's own broker (unset KAFKA_BOOTSTRAP)"}
    topic = f"bench-stall-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, opts.partitions)
    workdir = opts.tmp / "stall"
    workdir.mkdir(parents=True, exist_ok=True)
    file = workdir / "app.log"
    file.touch()
    spec = RunSpec(file, 0, topic, opts.partitions, broker.bootstrap, workdir)
    total = opts.stall_before + opts.stall + opts.stall_after
    freezer, samples = _Freezer(pid, opts.stall_before, opts.stall), _Samples()
    queue = {"max_bytes": QUEUE_MAX_BYTES, "max_lines": QUEUE_MAX_LINES}
    with running_shipper(spec, queue=queue) as sh:
        samples.t0 = time.monotonic()
        with start_writer(file, opts.stall_rate, total) as writer:
            _drive(sh, writer, freezer, samples)
            written = writer_result(writer)
        view = _settle(sh, written, samples, timeout=60)
        usage = proc_usage(sh.pid)
    # Every confirmed line is in the topic; unconfirmed ones may or may not be: wait for the
    # confirmed ones, then a moment for stragglers, and count what is there.
    want = int(view.confirmed) if view else written
    delivered = wait_total(broker, topic, opts.partitions, want, timeout=30)
    time.sleep(1.0)
    delivered = broker.end_total(topic, opts.partitions) or delivered
    broker.delete_topic(topic)
    return _report(
        opts,
        written=written,
        delivered=delivered,
        view=view,
        samples=samples,
        peak_kib=usage.peak_rss_kib if usage else None,
        freezer=freezer,
    )
