"""Throughput scenario: ship one N-line file with each program, several alternating reps."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchkit.broker import Broker
from benchkit.options import Options
from benchkit.procs import Usage, proc_usage, reap, stop, tail
from benchkit.programs import Launch, RunSpec, launch_for
from benchkit.shipmetrics import scrape

__all__ = ["RunResult", "run_one", "run_throughput", "runs_as_dicts", "warm_cache"]

_EXIT_GRACE = 10.0  # s a self-exiting program's records may still take to reach the broker
_SETTLE = 3.0  # s between runs, after the topic's files are deleted and dirty pages synced
# Deleted topics' segments go at once, not 60 s later in the middle of another run.
TOPIC_CONFIGS = {"file.delete.delay.ms": "0"}


@dataclass
class RunResult:
    """One program's run.

    status: ok; dropped (the shipper read every line but dropped some, so the count stalled
    below N: the rates are then per line read, up to the last record's arrival); exited
    (ended early, or exited with the count short); timeout.
    """

    program: str
    rep: int
    position: int
    status: str
    lines: int
    reached: int
    wall_s: float
    lines_per_s: float | None
    cpu_s: float | None
    cpu_s_per_mline: float | None
    peak_rss_mib: float | None
    exit_code: int | None = None
    cpu_s_incl_shutdown: float | None = None
    metrics: dict[str, Any] | None = None
    stderr_tail: str | None = None


@dataclass
class _Watch:
    status: str
    reached: int
    t_end: float
    exit_usage: Usage | None
    hwm_kib: int = 0


def warm_cache(path: Path) -> None:
    """Read the file once so every program starts with it in the page cache."""
    with path.open("rb", buffering=0) as f:
        while f.read(16 << 20):
            pass


@dataclass
class _Watcher:
    """Polls the broker (and the shipper's /metrics) until the run is decided."""

    proc: subprocess.Popen[bytes]
    broker: Broker
    spec: RunSpec
    launch: Launch
    reached: int = 0
    exit_usage: Usage | None = None
    exited_at: float | None = None
    hwm_kib: int = 0
    _stable_since: float = 0.0
    _next_scrape: float = 0.0

    def _sample(self, now: float) -> None:
        live = proc_usage(self.proc.pid) if self.proc.returncode is None else None
        if live:  # VmHWM: wait4's ru_maxrss would include the forking parent's RSS
            self.hwm_kib = max(self.hwm_kib, live.peak_rss_kib)
        if self.proc.returncode is None:
            self.exit_usage = reap(self.proc)
            if self.proc.returncode is not None:
                self.exited_at = now
        total = self.broker.end_total(self.spec.topic, self.spec.partitions)
        if total is not None and total != self.reached:
            self.reached, self._stable_since = total, time.monotonic()

    def _all_read_some_dropped(self, now: float) -> bool:
        """The shipper read every line, queued none and the broker count stopped moving."""
        if self.launch.metrics_url is None or now < self._next_scrape:
            return False
        self._next_scrape = now + 1.0
        view = scrape(self.launch.metrics_url)
        return bool(
            view
            and view.read >= self.spec.lines
            and view.queued == 0
            and sum(view.dropped.values()) > 0
            and now - self._stable_since > 2.0
        )

    def decide(self, now: float, deadline: float) -> str | None:
        done = self.reached >= self.spec.lines
        if done and (self.exited_at is not None or not self.launch.exits_when_done):
            return "ok"
        if self.exited_at is not None and (
            not self.launch.exits_when_done or now - self.exited_at > _EXIT_GRACE
        ):
            return "exited"
        if self._all_read_some_dropped(now):
            return "dropped"
        return "timeout" if now >= deadline else None

    def run(self, deadline: float, poll: float) -> _Watch:
        """Poll until decided; a program that just exited is re-polled at once."""
        while True:
            exited_before = self.exited_at is not None
            self._sample(time.monotonic())
            now = time.monotonic()
            status = self.decide(now, deadline)
            if status is not None:
                end = self._stable_since if status == "dropped" else now
                return _Watch(status, self.reached, end, self.exit_usage, self.hwm_kib)
            if exited_before or self.exited_at is None:
                self._sleep_sampling(poll)

    def _sleep_sampling(self, seconds: float) -> None:
        """Sleep, reading VmHWM every 20 ms (a short-lived kcat would otherwise be missed)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            live = proc_usage(self.proc.pid) if self.proc.returncode is None else None
            if live:
                self.hwm_kib = max(self.hwm_kib, live.peak_rss_kib)
            time.sleep(min(0.02, left))


def _result(program: str, spec: RunSpec, w: _Watch, wall: float, usage: Usage | None) -> RunResult:
    ok = w.status in {"ok", "dropped"}  # dropped: figures are per line read, flagged as such
    cpu = usage.cpu_s if usage else None
    hwm = max(w.hwm_kib, usage.peak_rss_kib if usage and not w.exit_usage else 0)
    return RunResult(
        program=program,
        rep=0,
        position=0,
        status=w.status,
        lines=spec.lines,
        reached=w.reached,
        wall_s=round(wall, 3),
        lines_per_s=round(spec.lines / wall) if ok else None,
        cpu_s=round(cpu, 2) if cpu is not None else None,
        cpu_s_per_mline=round(cpu / spec.lines * 1e6, 3) if ok and cpu is not None else None,
        peak_rss_mib=round(hwm / 1024, 1) if hwm else None,
    )


def run_one(
    program: str, spec: RunSpec, broker: Broker, opts: Options, profile_out: Path | None = None
) -> RunResult:
    """Start program, wait until the topic holds spec.lines records, stop it, measure."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    launch = launch_for(program, spec, profile_out)
    err_path = spec.workdir / f"{program}.stderr"
    with (spec.workdir / f"{program}.stdout").open("wb") as out, err_path.open("wb") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            launch.argv,
            stdout=out,
            stderr=err,
            env=launch.env,
            cwd=spec.workdir,
            stdin=subprocess.DEVNULL,
        )
        try:
            w = _Watcher(proc, broker, spec, launch).run(t0 + opts.timeout, opts.poll)
            live = proc_usage(proc.pid) if proc.returncode is None else None
            metrics = scrape(launch.metrics_url) if launch.metrics_url and live else None
        finally:
            final = stop(proc)
    res = _result(program, spec, w, w.t_end - t0, w.exit_usage or live or final)
    res.exit_code = proc.returncode
    res.cpu_s_incl_shutdown = round(final.cpu_s, 2) if final else None
    res.metrics = metrics.as_dict() if metrics else None
    if w.status != "ok":
        res.stderr_tail = tail(err_path)
    return res


def _order(programs: list[str], rep: int) -> list[str]:
    k = rep % len(programs)
    return programs[k:] + programs[:k]


def _describe(r: RunResult) -> str:
    if r.status == "dropped" and r.metrics:
        return (
            f"DROPPED {r.metrics['dropped_total']:,.0f} lines "
            f"({ {k: v for k, v in r.metrics['dropped'].items() if v} }); "
            f"{r.reached:,}/{r.lines:,} at the broker after {r.wall_s:.1f}s"
        )
    if r.status != "ok":
        return (
            f"{r.status.upper()} after {r.wall_s:.1f}s, {r.reached:,}/{r.lines:,} lines"
            f" (exit code {r.exit_code})"
        )
    return (
        f"{r.lines_per_s:,} lines/s, {r.cpu_s_per_mline} CPU-s/M lines, "
        f"peak RSS {r.peak_rss_mib} MiB"
    )


def _drop_and_settle(broker: Broker, topic: str) -> None:
    """Delete the run's topic, flush dirty pages and pause, so runs do not overlap in I/O."""
    broker.delete_topic(topic)
    time.sleep(1.0)
    os.sync()
    time.sleep(_SETTLE)


def _warm_broker(broker: Broker, file: Path, opts: Options) -> None:
    """One unmeasured kcat pass, so rep 1 does not pay for the broker's JIT warm-up."""
    if shutil.which("kcat") is None:
        print("bench: kcat not found; no broker warm-up", flush=True)
        return
    topic = f"bench-warmup-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, opts.partitions, TOPIC_CONFIGS)
    try:
        r = run_one(
            "kcat",
            RunSpec(
                file, opts.lines, topic, opts.partitions, broker.bootstrap, opts.tmp / "warmup"
            ),
            broker,
            opts,
        )
    finally:
        _drop_and_settle(broker, topic)
    print(f"bench: broker warm-up (kcat, not counted): {_describe(r)}", flush=True)


def run_throughput(broker: Broker, file: Path, opts: Options) -> list[RunResult]:
    """All reps; in rep r the program order is rotated by r; one fresh topic per run."""
    warm_cache(file)
    if opts.warmup:
        _warm_broker(broker, file, opts)
    runs: list[RunResult] = []
    reps = opts.reps
    for rep in range(reps):
        for pos, program in enumerate(_order(list(opts.programs), rep)):
            topic = f"bench-{program}-{rep}-{uuid.uuid4().hex[:8]}"
            spec = RunSpec(
                file,
                opts.lines,
                topic,
                opts.partitions,
                broker.bootstrap,
                opts.tmp / f"run-{rep}-{program}",
                opts.record_format,
            )
            broker.create_topic(topic, opts.partitions, TOPIC_CONFIGS)
            try:
                r = run_one(program, spec, broker, opts)
            finally:
                _drop_and_settle(broker, topic)
            r.rep, r.position = rep, pos
            runs.append(r)
            print(f"bench: rep {rep + 1}/{reps} {program:8s} {_describe(r)}", flush=True)
            if r.stderr_tail and r.status != "dropped":
                print(f"bench:   {program} stderr tail:\n{r.stderr_tail}", flush=True)
    return runs


def runs_as_dicts(runs: list[RunResult]) -> list[dict[str, Any]]:
    """JSON-ready raw runs."""
    return [asdict(r) for r in runs]
