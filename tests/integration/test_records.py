"""Records users can use, read back from a real broker: the JSON envelope, headers, keys and
partitioning by key (as Kafka's Java client partitions)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import ConsumerRecord

from tests.conftest import ROOT, Broker
from tests.integration.conftest import Start, append, base_config
from tests.support.readback import end_offsets, read_records
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


DOWNWARD_API = {
    "KUBERNETES_POD_NAME": "shop-7d9f-x2",
    "KUBERNETES_NAMESPACE": "shop",
    "KUBERNETES_NODE_NAME": "node-3",
    "KUBERNETES_POD_UID": "5f0c2a3e-0000-4000-8000-000000000001",
    "KUBERNETES_CONTAINER_NAME": "app",
    "SHIPPER_HOSTNAME": "box-1",
}
KUBERNETES = {
    "pod_name": "shop-7d9f-x2",
    "namespace": "shop",
    "node_name": "node-3",
    "pod_uid": "5f0c2a3e-0000-4000-8000-000000000001",
    "container_name": "app",
}
# Lines that test the envelope: text, quotes, backslashes, tabs, controls, UTF-8, bad UTF-8.
TRICKY = [
    b"plain line",
    b'{"already": "json"}',
    b"C:\\path\\to\\file",
    b"tab\there\x00nul\x1besc",
    "Zürich 東京 ✓".encode(),
    b"\xff\xfe not utf-8 \xc3",
    b"",
    b"x" * 3000,
]


def create_topic(broker: Broker, topic: str, partitions: int) -> None:
    """Create ``topic`` and wait until its partitions are known."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    wait_until(lambda: len(end_offsets(broker.bootstrap, topic)) == partitions, 30, "topic")


def read_all(broker: Broker, topic: str, n: int) -> list[ConsumerRecord]:
    """The ``n`` records of ``topic``, every partition, in offset order per partition."""
    got = read_records(broker.bootstrap, topic, timeout=60, expect=n)
    out = [r for recs in got.values() for r in recs]
    assert len(out) == n, f"{len(out)} records of {n}"
    return out


def message(value: bytes) -> bytes:
    """The original line back from a JSON envelope."""
    doc = json.loads(value)
    if doc.get("message_encoding") == "base64":
        return base64.b64decode(doc["message"], validate=True)
    return str(doc["message"]).encode()


def test_json_envelope_read_back(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """Every JSON record says what was read, where and when: the exact line, its offset in
    the file, the read time (also the record timestamp), host, path, static fields (the
    input's over the global ones) and the Downward API variables of the shipper's process;
    another input of the same topic stays raw."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a, b = a_dir / "app.log", b_dir / "raw.log"
    a.write_bytes(b"")
    b.write_bytes(b"")
    inputs = [
        {
            "paths": [str(a_dir / "*.log")],
            "start_at": "beginning",
            "format": "json",
            "fields": {"team": "payments", "tier": "1"},
        },
        {"paths": [str(b_dir / "*.log")], "start_at": "beginning"},
    ]
    kafka_cfg = {"fields": {"env": "prod", "team": "platform"}, "linger": "20ms"}
    cfg = base_config(kafka, topic, tmp_path, [], inputs=inputs, kafka=kafka_cfg)
    s = start_shipper(cfg, env=DOWNWARD_API)
    before = int(time.time() * 1000)
    lines = [*TRICKY, *(b"line %05d" % i for i in range(2000))]
    append(a, lines[:1000])
    append(b, [b"raw one", b"raw two"])
    append(a, lines[1000:])
    s.wait_for(lambda led: led["sent"] == len(lines) + 2, 60, "all lines sent")
    after = int(time.time() * 1000)
    assert s.stop() == 0
    got = read_all(kafka, topic, len(lines) + 2)
    envelopes = [r for r in got if r.value.startswith(b'{"message":')]
    assert sorted(r.value for r in got if r not in envelopes) == [b"raw one", b"raw two"]
    data = a.read_bytes()
    docs = []
    for r in envelopes:
        assert r.key is None
        assert r.headers == []
        doc = json.loads(r.value)
        line = message(r.value)
        assert data[doc["offset"] : doc["offset"] + len(line) + 1] == line + b"\n"
        assert (
            doc["@timestamp"]
            == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(r.timestamp // 1000))
            + f".{r.timestamp % 1000:03d}Z"
        )
        assert before <= r.timestamp <= after
        assert (doc["host"], doc["path"]) == ("box-1", str(a))
        assert doc["fields"] == {"env": "prod", "team": "payments", "tier": "1"}
        assert doc["kubernetes"] == KUBERNETES
        docs.append((doc["offset"], line))
    assert [line for _, line in sorted(docs)] == lines
    flagged = [json.loads(r.value) for r in envelopes if b"message_encoding" in r.value]
    assert [base64.b64decode(d["message"]) for d in flagged] == [b"\xff\xfe not utf-8 \xc3"]


def test_headers_and_path_keys_read_back(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """With headers and key path, each raw record carries its file as key, and host, path,
    fields, kubernetes and the line's offset as headers; each file's lines go to one
    partition, the one Kafka's default partitioner picks for the key, in file order."""
    create_topic(kafka, topic, 3)
    files = {tmp_path / f"f{i}.log": [b"f%d %05d" % (i, n) for n in range(1500)] for i in range(4)}
    for f in files:
        f.write_bytes(b"")
    kafka_cfg = {
        "headers": ["host", "path", "offset", "fields", "kubernetes"],
        "key": "path",
        "fields": {"env": "prod"},
        "linger": "20ms",
        "batch_max_lines": 400,
    }
    cfg = base_config(kafka, topic, tmp_path, [str(tmp_path / "*.log")], kafka=kafka_cfg)
    s = start_shipper(cfg, env=DOWNWARD_API)
    for f, lines in files.items():
        append(f, [*TRICKY[:5], *lines])
    total = sum(len(v) + 5 for v in files.values())
    s.wait_for(lambda led: led["sent"] == total, 60, "all lines sent")
    assert s.stop() == 0
    got = read_all(kafka, topic, total)
    expect_static = [
        ("host", b"box-1"),
        ("fields.env", b"prod"),
        *((f"kubernetes.{k}", v.encode()) for k, v in KUBERNETES.items()),
    ]
    homes: dict[bytes, set[int]] = {}
    for f, lines in files.items():
        mine = sorted((r for r in got if r.key == os.fsencode(f)), key=lambda r: r.offset)
        assert [r.value for r in mine] == [*TRICKY[:5], *lines]
        homes[os.fsencode(f)] = {r.partition for r in mine}
        data = f.read_bytes()
        for r in mine:
            names = [k for k, _ in r.headers]
            assert names == ["host", "path", "fields.env", *names[3:-1], "offset"]
            headers = dict(r.headers)
            assert [(k, headers[k]) for k, _ in expect_static] == expect_static
            assert headers["path"] == os.fsencode(f)
            at = int(headers["offset"])
            assert data[at : at + len(r.value) + 1] == r.value + b"\n"
    assert all(len(p) == 1 for p in homes.values()), homes
    java = java_partitions(list(homes), 3, tmp_path)
    assert {key: p.pop() for key, p in homes.items()} == java


def test_key_from_a_static_field(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """key field:NAME gives every record of an input that field's value as its key, so all
    of them share one partition; JSON records carry the key too."""
    create_topic(kafka, topic, 3)
    (tmp_path / "a.log").write_bytes(b"")
    kafka_cfg = {"key": "field:tenant", "fields": {"tenant": "acme"}, "format": "json"}
    cfg = base_config(kafka, topic, tmp_path, [str(tmp_path / "*.log")], kafka=kafka_cfg)
    s = start_shipper(cfg)
    append(tmp_path / "a.log", [b"%d" % i for i in range(3000)])
    s.wait_for(lambda led: led["sent"] == 3000, 60, "all lines sent")
    assert s.stop() == 0
    got = read_all(kafka, topic, 3000)
    assert {r.key for r in got} == {b"acme"}
    assert {r.partition for r in got} == {java_partitions([b"acme"], 3, tmp_path)[b"acme"]}
    assert sorted(int(message(r.value)) for r in got) == list(range(3000))


_JAVA_PARTITIONER = """
import java.util.HexFormat;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;

public class KeyPartition {
    public static void main(String[] args) {
        int partitions = Integer.parseInt(args[0]);
        for (int i = 1; i < args.length; i++) {
            byte[] key = HexFormat.of().parseHex(args[i]);
            System.out.println(BuiltInPartitioner.partitionForKey(key, partitions));
        }
    }
}
"""


def java_partitions(keys: list[bytes], partitions: int, workdir: Path) -> dict[bytes, int]:
    """The partition Kafka's Java producer picks for each key (its own partitioner, run
    from the broker's jars)."""
    cache = Path(os.environ.get("KAFKA_CACHE_DIR") or ROOT / ".cache")
    jars = sorted(cache.glob("kafka-jars/*/lib"))
    java = shutil.which(os.environ.get("JAVA", "java"))
    if not jars or java is None:
        pytest.skip("needs java and the Kafka jars (scripts/kafka-local fetch)")
    src = workdir / "KeyPartition.java"
    src.write_text(_JAVA_PARTITIONER)
    out = subprocess.run(
        [java, "-cp", f"{jars[-1]}/*", str(src), str(partitions), *(k.hex() for k in keys)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.split()
    return dict(zip(keys, map(int, out), strict=True))
