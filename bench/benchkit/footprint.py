"""Footprint scenario: CPU, memory and latency of a tailing daemon at steady low rates.

One program (the shipper or rsyslog) tails one file; a writer appends at each rate of a
ladder for a fixed step; per step the program's CPU, RSS, delivered lines/s and (at some
rates) write->broker latency are measured. Each program runs twice: on a topic created
before it starts, and on a topic that does not exist yet (a freshly started pod). Idle
states (empty log; topic there, topic new, broker unreachable, after traffic) are checked
against issue 12's targets.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from benchkit.broker import Broker
from benchkit.latency import percentile, stamp_ns
from benchkit.live import start_writer, writer_result
from benchkit.options import Options
from benchkit.procs import free_port, reap, stop, tail
from benchkit.programs import RunSpec, launch_for
from benchkit.shipmetrics import scrape

__all__ = [
    "AFTER",
    "IDLE_STATES",
    "LATENCY_RATES",
    "TAILERS",
    "TARGETS",
    "VARIANTS",
    "broker_setting",
    "evaluate_targets",
    "footprint_failed",
    "format_footprint",
    "run_footprint",
]

LATENCY_RATES = frozenset({1_000, 10_000})
TAILERS = ("shipper", "rsyslog")  # the programs that tail a file (kcat does not)
VARIANTS = ("topic_exists", "topic_new")
IDLE_STATES = ("topic_exists", "topic_new", "broker_unreachable", "after_traffic")
AFTER = "0 after"  # label of the idle step that closes every ladder
TOPIC_CONFIGS = {"message.timestamp.type": "LogAppendTime", "file.delete.delay.ms": "0"}
_SAMPLE_S = 0.25
_READY_TIMEOUT = 30.0
_DELIVERY_WAIT = 15.0  # s a step's last lines may take to reach the broker
_LOG_APPEND_TIME = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_MIB = 1024.0

# Issue 12's targets for the shipper (exclusive bounds: "under").
TARGETS = {
    "idle_cpu_pct": 2.0,
    "cpu_1k_pct": 3.0,
    "cpu_10k_pct": 8.0,
    "p99_10k_ms": 20.0,
    "rss_mib": 40.0,
}


# --- /proc readings -------------------------------------------------------------------------


def _cpu_s(pid: int) -> float | None:
    """utime + stime of every thread of pid, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status that matter here ({} if it is gone)."""
    keys = {"VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"}
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _reset_hwm(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux clear_refs 5); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _holds_open(pid: int, path: Path) -> bool:
    """True once pid has path open (the tailer found its input)."""
    target = str(path)
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if str(fd.readlink()) == target:
                    return True
    except OSError:
        return False
    return False


# --- results --------------------------------------------------------------------------------


@dataclass
class StepResult:
    """One rate step of one run; CPU and delivered lines/s over the window after the settle."""

    label: str
    rate: int
    window_s: float
    written: int
    delivered: int | None
    delivered_lines_per_s: float | None
    cpu_pct: float | None
    rss_median_mib: float | None
    rss_max_sampled_mib: float | None
    peak_rss_mib: float | None
    peak_is_per_step: bool
    latency: dict[str, Any] | None = None


@dataclass
class RunResult:
    """One program on one topic variant: start-up figures, then every step."""

    program: str
    variant: str
    topic: str
    status: str = "ok"
    topic_created_by: str = ""
    topic_seen_after_s: float | None = None
    startup: dict[str, Any] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    ledger: dict[str, Any] | None = None
    error: str | None = None


# --- one running program --------------------------------------------------------------------


@dataclass
class _Topic:
    """The run's topic as the harness sees it; not queried before it exists (no auto-create)."""

    broker: Broker
    name: str
    partitions: int
    exists: bool
    watch: bool = True  # False when the program cannot reach the broker: nothing to look up
    created_at: float | None = None
    log_append: bool = False

    def check(self, t0: float) -> None:
        """Look for the topic in the broker's topic list (no metadata request that creates it)."""
        if self.exists or not self.watch:
            return
        try:
            names = self.broker.admin.list_topics()
        except KafkaError:
            return
        if self.name in names:
            self.exists, self.created_at = True, time.monotonic() - t0
            self.partitions = _partition_count(self.broker, self.name) or self.partitions

    def offsets(self) -> dict[int, int] | None:
        """Per-partition end offsets; None while the topic is not there (or not answering)."""
        if not self.exists:
            return None
        tps = [TopicPartition(self.name, p) for p in range(self.partitions)]
        try:
            ends = self.broker.consumer.end_offsets(tps)
        except KafkaError:
            return None
        return {tp.partition: int(off) for tp, off in ends.items()}

    def total(self) -> int | None:
        offs = self.offsets()
        return sum(offs.values()) if offs is not None else None

    def ensure_log_append_time(self) -> None:
        """A topic the broker auto-created has CreateTime; latency needs LogAppendTime."""
        if not self.exists or self.log_append:
            return
        res = ConfigResource(
            ConfigResourceType.TOPIC, self.name, configs={"message.timestamp.type": "LogAppendTime"}
        )
        with contextlib.suppress(KafkaError):
            self.broker.admin.alter_configs([res])
            self.log_append = True


def _partition_count(broker: Broker, topic: str) -> int | None:
    try:
        described = broker.admin.describe_topics([topic])
    except KafkaError:
        return None
    for t in described:
        if t.get("topic", t.get("name")) == topic and t.get("partitions"):
            return len(t["partitions"])
    return None


def broker_setting(broker: Broker, key: str) -> str | None:
    """One broker config value (e.g. auto.create.topics.enable), None if not readable."""
    try:
        brokers = broker.admin.describe_cluster()["brokers"]
        node = str(brokers[0]["broker_id"])
        res = ConfigResource(ConfigResourceType.BROKER, node)
        doc = broker.admin.describe_configs([res], config_filter="all")
        value = doc["broker"][node][key]["value"]
    except (KafkaError, KeyError, IndexError, TypeError):
        return None
    return None if value is None else str(value)


@dataclass
class _Live:
    """A running program, the file it tails and its topic."""

    program: str
    proc: subprocess.Popen[bytes]
    file: Path
    topic: _Topic
    stderr: Path
    metrics_url: str | None
    t0: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        reap(self.proc)
        return self.proc.returncode is None


def _ready(live: _Live) -> bool:
    """The shipper answers /metrics once running (it opens an empty file only when it grows);
    rsyslog has no such endpoint: it is ready once it holds its input file open."""
    if live.metrics_url is not None:
        return scrape(live.metrics_url, timeout=1.0) is not None
    return _holds_open(live.pid, live.file)


def _wait_ready(live: _Live) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not _ready(live):
        if not live.alive():
            raise RuntimeError(
                f"{live.program} exited with code {live.proc.returncode}:\n{tail(live.stderr)}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{live.program} not ready within {_READY_TIMEOUT:.0f} s:\n{tail(live.stderr)}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def _running(program: str, spec: RunSpec, topic: _Topic) -> Iterator[_Live]:
    spec.workdir.mkdir(parents=True, exist_ok=True)
    spec.file.touch()
    launch = launch_for(program, spec)
    err = spec.workdir / f"{program}.stderr"
    with err.open("wb") as err_f, (spec.workdir / f"{program}.stdout").open("wb") as out_f:
        proc = subprocess.Popen(
            launch.argv,
            stdout=out_f,
            stderr=err_f,
            env=launch.env,
            cwd=spec.workdir,
            stdin=subprocess.DEVNULL,
        )
        live = _Live(program, proc, spec.file, topic, err, launch.metrics_url, time.monotonic())
        try:
            _wait_ready(live)
            yield live
        finally:
            stop(proc)


# --- one step -------------------------------------------------------------------------------


@dataclass
class _Window:
    """What a step needs after the program has stopped: offsets and the measured wall clock."""

    start_offsets: dict[int, int] | None
    end_offsets: dict[int, int] | None
    ns0: int
    ns1: int


@dataclass
class _Rss:
    samples: list[int] = field(default_factory=list)

    def take(self, pid: int) -> None:
        kib = _status(pid).get("VmRSS")
        if kib:
            self.samples.append(kib)


def _mib(kib: float | None) -> float | None:
    return round(kib / _MIB, 1) if kib else None


def _sleep_sampling(live: _Live, until: float, rss: _Rss | None) -> None:
    """Sleep until `until`, taking RSS samples (and looking for a new topic) every 0.25 s."""
    while (left := until - time.monotonic()) > 0:
        if rss is not None:
            rss.take(live.pid)
        live.topic.check(live.t0)
        time.sleep(min(_SAMPLE_S, left))


def _step(live: _Live, rate: int, label: str, opts: Options) -> tuple[StepResult, _Window]:
    """Write at rate for opts.footprint_step s; measure after opts.footprint_settle s."""
    live.topic.check(live.t0)
    live.topic.ensure_log_append_time()
    start = live.topic.offsets()
    per_step_peak = _reset_hwm(live.pid)
    t_step = time.monotonic()
    step, settle = opts.footprint_step, opts.footprint_settle
    rss = _Rss()
    with contextlib.ExitStack() as stack:
        writer = (
            stack.enter_context(start_writer(live.file, rate, step, stamp=True)) if rate else None
        )
        _sleep_sampling(live, t_step + settle, None)
        cpu0, w0, ns0 = _cpu_s(live.pid), time.monotonic(), time.time_ns()
        total0 = live.topic.total()
        _sleep_sampling(live, t_step + step, rss)
        cpu1, w1, ns1 = _cpu_s(live.pid), time.monotonic(), time.time_ns()
        total1 = live.topic.total()
        hwm = _status(live.pid).get("VmHWM")
        written = writer_result(writer, timeout=step + 60) if writer is not None else 0
    base = sum(start.values()) if start else 0
    end_total = _wait_delivered(live, base + written) if written else live.topic.total()
    window = w1 - w0
    cpu = round((cpu1 - cpu0) / window * 100, 2) if cpu0 is not None and cpu1 is not None else None
    if total0 is None and total1 is not None and written:
        lps = None  # the topic appeared inside the window: its first count is not a rate
    elif total1 is not None and window > 0:
        lps = round((total1 - (total0 or 0)) / window, 1)
    else:
        lps = 0.0 if written == 0 else None
    res = StepResult(
        label=label,
        rate=rate,
        window_s=round(window, 2),
        written=written,
        delivered=(end_total - base) if end_total is not None else (0 if not written else None),
        delivered_lines_per_s=lps,
        cpu_pct=cpu,
        rss_median_mib=_mib(statistics.median(rss.samples)) if rss.samples else None,
        rss_max_sampled_mib=_mib(max(rss.samples)) if rss.samples else None,
        peak_rss_mib=_mib(hwm),
        peak_is_per_step=per_step_peak,
    )
    return res, _Window(start, live.topic.offsets(), ns0, ns1)


def _wait_delivered(live: _Live, want: int) -> int | None:
    deadline, total = time.monotonic() + _DELIVERY_WAIT, None
    while time.monotonic() < deadline:
        live.topic.check(live.t0)
        total = live.topic.total()
        if total is not None and total >= want:
            break
        time.sleep(0.2)
    return total


# --- latency read-back ----------------------------------------------------------------------


def _read_latency(
    bootstrap: str, topic: _Topic, w: _Window, timeout: float = 60.0
) -> dict[str, Any]:
    """Append time minus write time for the records written inside the step's window."""
    if w.end_offsets is None:
        return {"skipped": "topic not there"}
    start = w.start_offsets or dict.fromkeys(w.end_offsets, 0)
    wanted = {
        p: (start.get(p, 0), end) for p, end in w.end_offsets.items() if end > start.get(p, 0)
    }
    lat: list[float] = []
    seen = bad = 0
    if wanted:
        c = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
        )
        try:
            tps = {p: TopicPartition(topic.name, p) for p in wanted}
            c.assign(list(tps.values()))
            for p, (lo, _hi) in wanted.items():
                c.seek(tps[p], lo)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(
                c.position(tps[p]) < hi for p, (_lo, hi) in wanted.items()
            ):
                for tp, records in c.poll(timeout_ms=500, max_records=100_000).items():
                    hi = wanted[tp.partition][1]
                    for r in records:
                        if r.offset >= hi:
                            continue
                        seen += 1
                        ns = stamp_ns(r.value)
                        if ns is None or r.timestamp_type != _LOG_APPEND_TIME:
                            bad += 1
                        elif w.ns0 <= ns <= w.ns1:
                            lat.append(r.timestamp - ns / 1e6)
        finally:
            c.close()
    lat.sort()
    return {
        "lines_in_window": len(lat),
        "read_back": seen,
        "unstamped_or_not_append_time": bad,
        "p50_ms": round(percentile(lat, 50), 2) if lat else None,
        "p99_ms": round(percentile(lat, 99), 2) if lat else None,
        "max_ms": round(lat[-1], 2) if lat else None,
    }


# --- runs -----------------------------------------------------------------------------------


def _ladder(opts: Options) -> list[tuple[int, str]]:
    steps = [(r, f"{r}") for r in opts.footprint_rates]
    return [*steps, (0, AFTER)]


def _one_run(
    broker: Broker,
    opts: Options,
    *,
    program: str,
    variant: str,
    auto_create: bool,
    ladder: list[tuple[int, str]],
) -> RunResult:
    """Start program on a fresh topic (created first, or left to the program), run the ladder."""
    name = f"bench-fp-{program}-{variant.replace('_', '-')}-{uuid.uuid4().hex[:8]}"
    topic = _Topic(broker, name, opts.partitions, exists=False)
    res = RunResult(program, variant, name)
    if variant == "topic_exists":
        broker.create_topic(name, opts.partitions, TOPIC_CONFIGS)
        topic.exists, topic.log_append = True, True
        res.topic_created_by = "harness, before the program started"
    bootstrap = broker.bootstrap
    if variant == "broker_unreachable":
        bootstrap = f"127.0.0.1:{free_port()}"  # nothing listens there
        topic.watch = False
        res.topic_created_by = "none: the program is pointed at a closed port"
    workdir = opts.tmp / "footprint" / f"{program}-{variant}"
    spec = RunSpec(workdir / "app.log", 0, name, opts.partitions, bootstrap, workdir)
    windows: list[tuple[StepResult, _Window]] = []
    try:
        with _running(program, spec, topic) as live:
            st = _status(live.pid)
            res.startup = {
                "ready_after_s": round(time.monotonic() - live.t0, 2),
                "cpu_s": _cpu_s(live.pid),
                "rss_mib": _mib(st.get("VmRSS")),
                "peak_rss_mib": _mib(st.get("VmHWM")),
            }
            for rate, label in ladder:
                if not live.alive():
                    raise RuntimeError(
                        f"{program} exited with code {live.proc.returncode}:\n{tail(live.stderr)}"
                    )
                step, window = _step(live, rate, label, opts)
                windows.append((step, window))
                res.steps.append(step)
                print(f"bench: footprint {program:8s} {variant:18s} {_describe(step)}", flush=True)
                if label == "0" and variant == "topic_new" and not topic.exists and not auto_create:
                    broker.create_topic(name, opts.partitions, TOPIC_CONFIGS)
                    topic.check(live.t0)
                    topic.log_append = True
            if live.metrics_url:
                view = scrape(live.metrics_url)
                res.ledger = view.as_dict() if view else None
    except (RuntimeError, TimeoutError, OSError, KafkaError, subprocess.SubprocessError) as err:
        res.status, res.error = "failed", str(err)[-1500:]
        print(f"bench: footprint {program} {variant}: FAILED: {res.error}", flush=True)
    if variant == "topic_new":
        res.topic_seen_after_s = (
            round(topic.created_at, 2) if topic.created_at is not None else None
        )
        if not res.topic_created_by:
            res.topic_created_by = (
                "broker auto-create, on the program's first metadata request"
                if auto_create
                else "harness, after the idle step (the broker does not auto-create topics)"
            )
    for step, window in windows:
        if step.rate in LATENCY_RATES and variant != "broker_unreachable":
            step.latency = _read_latency(broker.bootstrap, topic, window)
    if variant != "broker_unreachable":
        broker.delete_topic(name)
    return res


def _describe(s: StepResult) -> str:
    lat = ""
    if s.latency and s.latency.get("p99_ms") is not None:
        lat = f", p99 {s.latency['p99_ms']} ms"
    rate = f"{s.rate:>6,}/s" if s.label != AFTER else "0 after"
    return (
        f"{rate:>9s}: CPU {_fmt(s.cpu_pct, '.2f')} %, RSS {_fmt(s.rss_median_mib, '.1f')} "
        f"(peak {_fmt(s.peak_rss_mib, '.1f')}) MiB, delivered "
        f"{_fmt(s.delivered_lines_per_s, ',.0f')}/s{lat}"
    )


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _idle(runs: list[RunResult]) -> list[dict[str, Any]]:
    """Each program's idle states (empty log), taken from the runs' idle steps."""
    where = {
        "topic_exists": ("topic_exists", "0"),
        "topic_new": ("topic_new", "0"),
        "broker_unreachable": ("broker_unreachable", "0"),
        "after_traffic": ("topic_exists", AFTER),
    }
    out = []
    for program in dict.fromkeys(r.program for r in runs):
        for state in IDLE_STATES:
            variant, label = where[state]
            run = next((r for r in runs if r.program == program and r.variant == variant), None)
            step = next((s for s in run.steps if s.label == label), None) if run else None
            out.append(
                {
                    "program": program,
                    "state": state,
                    "cpu_pct": step.cpu_pct if step else None,
                    "rss_median_mib": step.rss_median_mib if step else None,
                    "peak_rss_mib": step.peak_rss_mib if step else None,
                    "from": f"{variant} run, step {label!r}",
                }
            )
    return out


def _check(where: str, figure: str, value: float | None, limit: float) -> dict[str, Any]:
    return {
        "where": where,
        "figure": figure,
        "value": value,
        "limit": limit,
        "met": value is not None and value < limit,
    }


def _shipper_step(runs: list[dict[str, Any]], variant: str, rate: int) -> dict[str, Any] | None:
    for r in runs:
        if r["program"] == "shipper" and r["variant"] == variant:
            return next((s for s in r["steps"] if s["label"] == str(rate)), None)
    return None


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets for the shipper: met or not, with every figure that decides it."""
    runs, idle = doc["runs"], [i for i in doc["idle"] if i["program"] == "shipper"]
    variants = [
        v for v in VARIANTS if any(r["program"] == "shipper" and r["variant"] == v for r in runs)
    ]

    def step_value(variant: str, rate: int, key: str) -> float | None:
        s = _shipper_step(runs, variant, rate)
        if s is None:
            return None
        if key == "p99_ms":
            return (s.get("latency") or {}).get("p99_ms")
        value: float | None = s.get(key)
        return value

    t = TARGETS
    targets = [
        (
            "idle_cpu",
            f"idle: under {t['idle_cpu_pct']:g}% of a core in each idle state",
            [_check(i["state"], "cpu_pct", i["cpu_pct"], t["idle_cpu_pct"]) for i in idle],
        ),
        (
            "cpu_1k",
            f"1,000 lines/s: under {t['cpu_1k_pct']:g}% of a core",
            [
                _check(v, "cpu_pct", step_value(v, 1_000, "cpu_pct"), t["cpu_1k_pct"])
                for v in variants
            ],
        ),
        (
            "cpu_10k",
            f"10,000 lines/s: under {t['cpu_10k_pct']:g}% of a core with p99 write->broker "
            f"under {t['p99_10k_ms']:g} ms",
            [
                c
                for v in variants
                for c in (
                    _check(v, "cpu_pct", step_value(v, 10_000, "cpu_pct"), t["cpu_10k_pct"]),
                    _check(v, "p99_ms", step_value(v, 10_000, "p99_ms"), t["p99_10k_ms"]),
                )
            ],
        ),
        (
            "rss",
            f"RSS under {t['rss_mib']:g} MiB at idle and at 10,000 lines/s (peak of the step)",
            [
                *(
                    _check(f"idle {i['state']}", "peak_rss_mib", i["peak_rss_mib"], t["rss_mib"])
                    for i in idle
                ),
                *(
                    _check(
                        f"10k {v}",
                        "peak_rss_mib",
                        step_value(v, 10_000, "peak_rss_mib"),
                        t["rss_mib"],
                    )
                    for v in variants
                ),
            ],
        ),
    ]
    return [
        {
            "id": tid,
            "target": text,
            "met": all(c["met"] for c in checks) if checks else None,  # None: no figures
            "checks": checks,
        }
        for tid, text, checks in targets
    ]


def run_footprint(broker: Broker, opts: Options, programs: list[str]) -> dict[str, Any]:
    """Every tailing program on both topic variants, then broker-unreachable idle; targets."""
    auto = broker_setting(broker, "auto.create.topics.enable")
    auto_create = auto != "false"  # Kafka's default is true
    ladder = _ladder(opts)
    runs: list[RunResult] = []
    for program in programs:
        for variant in VARIANTS:
            runs.append(
                _one_run(
                    broker,
                    opts,
                    program=program,
                    variant=variant,
                    auto_create=auto_create,
                    ladder=ladder,
                )
            )
        runs.append(
            _one_run(
                broker,
                opts,
                program=program,
                variant="broker_unreachable",
                auto_create=auto_create,
                ladder=[(0, "0")],
            )
        )
    doc: dict[str, Any] = {
        "programs": programs,
        "rates": list(opts.footprint_rates),
        "step_s": opts.footprint_step,
        "settle_s": opts.footprint_settle,
        "sample_s": _SAMPLE_S,
        "latency_rates": sorted(LATENCY_RATES),
        "partitions": opts.partitions,
        "broker_auto_create_topics": auto,
        "runs": [asdict(r) for r in runs],
    }
    doc["idle"] = _idle(runs)
    doc["targets"] = evaluate_targets(doc)
    return doc


def footprint_failed(doc: dict[str, Any]) -> bool:
    """True if a run could not be completed (its figures are missing)."""
    return any(r["status"] != "ok" for r in doc.get("runs", []))


def format_footprint(doc: dict[str, Any]) -> str:
    """The per-step table of every run, the idle states and the targets."""
    head = (
        f"{'program':8s} {'topic':18s} {'step':>8s} {'CPU %':>7s} {'RSS med':>8s} "
        f"{'peak':>6s} {'delivered/s':>12s} {'p50 ms':>7s} {'p99 ms':>7s}"
    )
    rows = [head, "-" * len(head)]
    for r in doc["runs"]:
        if r["status"] != "ok":
            rows.append(f"{r['program']:8s} {r['variant']:18s} FAILED: {r['error'][:200]}")
        for s in r["steps"]:
            lat = s.get("latency") or {}
            rows.append(
                f"{r['program']:8s} {r['variant']:18s} {s['label']:>8s} "
                f"{_fmt(s['cpu_pct'], '.2f'):>7s} {_fmt(s['rss_median_mib'], '.1f'):>8s} "
                f"{_fmt(s['peak_rss_mib'], '.1f'):>6s} "
                f"{_fmt(s['delivered_lines_per_s'], ',.0f'):>12s} "
                f"{_fmt(lat.get('p50_ms'), '.2f'):>7s} {_fmt(lat.get('p99_ms'), '.2f'):>7s}"
            )
    rows.append(f"broker auto.create.topics.enable = {doc['broker_auto_create_topics']}")
    for r in doc["runs"]:
        if r["variant"] == "topic_new":
            rows.append(
                f"{r['program']}: new topic created by {r['topic_created_by']}"
                f" (seen {r['topic_seen_after_s']} s after start)"
            )
    rows.append("targets (shipper, issue 12):")
    for t in doc["targets"]:
        figures = ", ".join(
            f"{c['where']} {c['figure']} {_fmt(c['value'], '.2f')}" for c in t["checks"]
        )
        verdict = {True: "met", False: "NOT met", None: "no figures"}[t["met"]]
        rows.append(f"  [{verdict}] {t['target']}: {figures}")
    return "\n".join(rows)
