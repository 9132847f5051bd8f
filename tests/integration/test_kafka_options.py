"""Partitioning and compression options, checked by reading the records back."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from tests.conftest import Broker
from tests.integration.conftest import Start, append, base_config
from tests.support.readback import end_offsets, read_topic
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


def create_topic(broker: Broker, topic: str, partitions: int) -> None:
    """Create ``topic`` and wait until the broker's metadata shows all its partitions."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    wait_until(
        lambda: len(end_offsets(broker.bootstrap, topic)) == partitions,
        30,
        f"{partitions} partitions of {topic} in the metadata",
        interval=0.1,
    )


def ship(
    broker: Broker, topic: str, tmp_path: Path, start: Start, files: dict[str, int], **kafka: object
) -> dict[int, list[bytes]]:
    for name in files:
        (tmp_path / name).touch()
    s = start(
        base_config(
            broker,
            topic,
            tmp_path,
            [str(tmp_path / "*.log")],
            kafka={"linger": "20ms", "batch_max_lines": 500, **kafka},
        )
    )
    total = 0
    for name, n in files.items():
        append(tmp_path / name, [b"%s %06d" % (name.encode(), i) for i in range(n)])
        total += n
    s.wait_for(lambda led: led["sent"] == total, 60, "all lines sent")
    assert s.stop() == 0
    return read_topic(broker.bootstrap, topic, timeout=60, expect=total)


def test_round_robin_spreads_batches(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """partition_by none spreads batches over partitions; every line arrives once."""
    create_topic(kafka, topic, 3)
    parts = ship(kafka, topic, tmp_path, start_shipper, {"a.log": 6000})
    got = [v for p in parts.values() for v in p]
    assert sorted(got) == sorted(b"a.log %06d" % i for i in range(6000))
    assert sum(1 for p in parts.values() if p) >= 2


def test_partition_by_file_keeps_each_file_in_one_partition(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """partition_by file sends each file's lines to one partition, in order."""
    create_topic(kafka, topic, 3)
    files = {f"f{i}.log": 2000 for i in range(4)}
    parts = ship(kafka, topic, tmp_path, start_shipper, files, partition_by="file")
    for name, n in files.items():
        homes = [p for p, vals in parts.items() if any(v.startswith(name.encode()) for v in vals)]
        assert len(homes) == 1, (name, homes)
        mine = [v for v in parts[homes[0]] if v.startswith(name.encode() + b" ")]
        assert mine == [b"%s %06d" % (name.encode(), i) for i in range(n)]


def test_partition_by_host_uses_one_partition(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """partition_by host sends everything from this host to one partition."""
    create_topic(kafka, topic, 3)
    parts = ship(
        kafka, topic, tmp_path, start_shipper, {"a.log": 3000, "b.log": 3000}, partition_by="host"
    )
    assert sorted(len(v) for v in parts.values()) == [0, 0, 6000]


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "snappy"])
def test_compression_round_trip(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, codec: str
) -> None:
    """Every codec's batches are accepted by the broker and read back byte-exact."""
    parts = ship(kafka, topic, tmp_path, start_shipper, {"c.log": 5000}, compression=codec)
    assert parts[0] == [b"c.log %06d" % i for i in range(5000)]
