"""Read back what was shipped: end offsets and records of a topic (tests, demo and bench)."""

from __future__ import annotations

import gc
import time
import warnings
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from tests.support.wait import wait_until

__all__ = ["collect_stray_sockets", "end_offsets", "read_records", "read_topic"]


def _consumer(bootstrap: str, options: dict[str, Any] | None = None) -> KafkaConsumer:
    return KafkaConsumer(
        **(options or {}),
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        request_timeout_ms=30_000,
    )


def collect_stray_sockets() -> None:
    """Collect the sockets kafka-python 3.0.12 leaves behind, quietly.

    It does not close the socket of a connect attempt that fails or is abandoned (a broker
    restarting, a client closed mid-connect). The garbage collector closes it later, with a
    ResourceWarning in whatever code runs then; call this after closing a client instead.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _close(c: KafkaConsumer) -> None:
    c.close()
    collect_stray_sockets()


def _partitions(c: KafkaConsumer, topic: str, timeout: float) -> list[TopicPartition]:
    """The partitions of ``topic`` once the metadata knows it; none after ``timeout``."""
    try:
        parts = wait_until(lambda: c.partitions_for_topic(topic), timeout, topic, 0.2)
    except AssertionError:  # no such topic (yet): the caller reads nothing
        return []
    return [TopicPartition(topic, p) for p in sorted(parts)]


def end_offsets(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """Return {partition: end offset} (0 partitions if the topic does not exist)."""
    c = _consumer(bootstrap)
    try:
        tps = _partitions(c, topic, timeout)
        if not tps:
            return {}
        return {tp.partition: off for tp, off in c.end_offsets(tps).items()}
    finally:
        _close(c)


def read_topic(
    bootstrap: str,
    topic: str,
    timeout: float = 30.0,
    expect: int | None = None,
    *,
    options: dict[str, Any] | None = None,
) -> dict[int, list[bytes]]:
    """Return every record value of ``topic`` by partition, in offset order.

    Reads up to the end offsets seen at the start (or until ``expect`` records, if given,
    have arrived, waiting up to ``timeout``). ``options`` are more KafkaConsumer settings
    (a secured broker's ``security_protocol``, ``ssl_context``, ``sasl_*``).
    """
    return {
        p: [r.value for r in recs]
        for p, recs in read_records(bootstrap, topic, timeout, expect, options=options).items()
    }


def read_records(
    bootstrap: str,
    topic: str,
    timeout: float = 30.0,
    expect: int | None = None,
    *,
    options: dict[str, Any] | None = None,
) -> dict[int, list[ConsumerRecord]]:
    """Return every record of ``topic`` (key, value, headers, timestamp...) by partition,
    in offset order, read as ``read_topic`` reads."""
    c = _consumer(bootstrap, options)
    try:
        tps = _partitions(c, topic, timeout)
        out: dict[int, list[ConsumerRecord]] = {tp.partition: [] for tp in tps}
        if not tps:
            return out
        c.assign(tps)
        c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        ends = c.end_offsets(tps)
        while time.monotonic() < deadline:
            total = sum(len(v) for v in out.values())
            if expect is None:
                if all(c.position(tp) >= ends[tp] for tp in tps):
                    break
            elif total >= expect:
                break
            for tp, recs in c.poll(timeout_ms=500, max_records=100_000).items():
                out[tp.partition].extend(recs)
        return out
    finally:
        _close(c)
