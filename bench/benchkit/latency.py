"""Latency scenario: a steady writer stamps each line; the broker stamps its append time."""

from __future__ import annotations

import time
import uuid
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from benchkit.broker import Broker
from benchkit.live import running_shipper, start_writer, writer_result
from benchkit.options import Options
from benchkit.procs import proc_usage
from benchkit.programs import RunSpec
from benchkit.shipmetrics import scrape

__all__ = ["percentile", "run_latency", "stamp_ns"]

_LOG_APPEND_TIME = 1


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def wait_total(broker: Broker, topic: str, partitions: int, want: int, *, timeout: float) -> int:
    """Poll end offsets until they reach want or timeout; return the last total."""
    deadline, total = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        total = broker.end_total(topic, partitions) or total
        if total >= want:
            break
        time.sleep(0.2)
    return total


def stamp_ns(value: bytes) -> int | None:
    """The writer's ts=<ns> stamp at the start of a line (None if it has none)."""
    if not value.startswith(b"ts="):
        return None
    try:
        return int(value[3 : value.index(b" ")])
    except ValueError:
        return None


def read_latencies(
    bootstrap: str, topic: str, partitions: int, expect: int, timeout: float = 60.0
) -> tuple[list[float], int, int]:
    """Append time minus write time in ms per record, plus counts of records and bad records."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    lat: list[float] = []
    seen = bad = 0
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while seen < expect and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=500, max_records=100_000).values():
                for r in records:
                    seen += 1
                    ns = stamp_ns(r.value)
                    if ns is None or r.timestamp_type != _LOG_APPEND_TIME:
                        bad += 1
                        continue
                    lat.append(r.timestamp - ns / 1e6)
    finally:
        c.close()
    return lat, seen, bad


def _summary(lat: list[float]) -> dict[str, float]:
    lat.sort()
    return {
        "p50_ms": round(percentile(lat, 50), 2),
        "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(lat[-1], 2) if lat else float("nan"),
        "mean_ms": round(sum(lat) / len(lat), 2) if lat else float("nan"),
    }


def run_latency(broker: Broker, opts: Options) -> dict[str, Any]:
    """Ship a stamped stream at opts.latency_rate for opts.duration s; percentiles in ms."""
    topic = f"bench-latency-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, opts.partitions, {"message.timestamp.type": "LogAppendTime"})
    workdir = opts.tmp / "latency"
    workdir.mkdir(parents=True, exist_ok=True)
    file = workdir / "app.log"
    file.touch()
    spec = RunSpec(file, 0, topic, opts.partitions, broker.bootstrap, workdir)
    with running_shipper(spec) as sh:
        with start_writer(file, opts.latency_rate, opts.duration, stamp=True) as writer:
            written = writer_result(writer, timeout=opts.duration + 60)
        delivered = wait_total(broker, topic, opts.partitions, written, timeout=60)
        usage = proc_usage(sh.pid)
        view = scrape(sh.metrics_url)
    lat, seen, bad = read_latencies(broker.bootstrap, topic, opts.partitions, delivered)
    broker.delete_topic(topic)
    return {
        "rate": opts.latency_rate,
        "duration_s": opts.duration,
        "written": written,
        "delivered": delivered,
        "read_back": seen,
        "unstamped_or_not_append_time": bad,
        **_summary(lat),
        "cpu_s": round(usage.cpu_s, 2) if usage else None,
        "peak_rss_mib": round(usage.peak_rss_kib / 1024, 1) if usage else None,
        "metrics": view.as_dict() if view else None,
    }
