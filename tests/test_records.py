"""Records: JSON envelopes, headers, keys and timestamps from chunks, exact to the byte."""

from __future__ import annotations

import base64
import ctypes
import json
import os
from array import array
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipper.chunk import Chunk, Source
from shipper.config import KafkaConfig, Route, build, parse
from shipper.kafka import compat
from shipper.kafka.encode import RECORD_OVERHEAD, batch_size
from shipper.kafka.records import Encoded, Records, partition_hash, rfc3339
from tests.support.reference import Record, decode_batch, reference_batch

READ_AT = 1_714_567_890.1234  # 2024-05-01T12:51:30.123Z
KUBE = {"pod_name": "web-7d9f", "namespace": "shop", "node_name": "node-1"}
ALL_HEADERS = ("host", "path", "offset", "fields", "kubernetes")
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kafka_cfg(**kw: Any) -> KafkaConfig:
    """A Kafka config as the daemon derives it: on host web-1, in a pod."""
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()}
    cfg = build(KafkaConfig, bootstrap_servers=["127.0.0.1:9092"], topic="logs", **kw)
    return replace(cfg, host="web-1", kubernetes=dict(KUBE))


class File:
    """The bytes of a file and chunks cut from it, as the reader makes them."""

    def __init__(self, path: str, lines: list[bytes], eol: bytes, head: bytes = b"") -> None:
        self.path = path
        self.data = head + b"".join(x + eol for x in lines)
        self.chunk = Chunk(
            lines, sum(map(len, lines)), Source(path, 0), READ_AT, len(head), len(eol)
        )

    def line_at(self, offset: int, length: int) -> bytes:
        """The bytes of the line that starts at ``offset``."""
        return self.data[offset : offset + length]


def records_of(batches: list[Encoded]) -> list[Record]:
    """Every record of every batch, each batch checked against kafka-python's own bytes."""
    out: list[Record] = []
    for b in batches:
        assert b.payload is not None
        got = decode_batch(b.payload)
        assert b.payload == reference_batch(got)  # the same records, the same bytes
        assert b.lines == len(got)
        out += got
    return out


def message(value: bytes) -> bytes:
    """The original line back from a JSON envelope."""
    doc = json.loads(value)
    if doc.get("message_encoding") == "base64":
        return base64.b64decode(doc["message"], validate=True)
    assert "message_encoding" not in doc
    return str(doc["message"]).encode()


# Lines of every kind: ASCII, UTF-8 text, quotes and backslashes, control characters
# (tabs, NUL, newlines of joined multiline records), invalid UTF-8, empty.
_text_line = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=80).map(
    str.encode
)
_line = st.one_of(
    _text_line,
    st.binary(max_size=80),
    st.sampled_from(
        [b"", b'say "hi"', b"back\\slash", b"a\tb\x00c\x1f", b"\xff", b"\xc3", b"x\xe2\x82"]
    ),
)
_lines = st.lists(_line.filter(lambda x: b"\n" not in x), min_size=1, max_size=40)


@_SETTINGS
@given(_lines, st.sampled_from([b"\n", b"\r\n"]), st.binary(max_size=30))
def test_json_envelope_round_trips_every_line(lines: list[bytes], eol: bytes, head: bytes) -> None:
    """Each line becomes one compact JSON object whose message gives back the exact bytes
    (base64 and a flag when not UTF-8), with its offset in the file, time, host, path,
    fields and kubernetes; the batch is kafka-python's bytes for those records."""
    f = File("/var/log/app/app.log", lines, eol, head)
    cfg = kafka_cfg(format="json")
    recs = Records(cfg, [Route("logs", "json", {"env": "prod", "team": "core"})])
    got = records_of(list(recs.batches([f.chunk], 1 << 20, 10_000)))
    assert len(got) == len(lines)
    ms = int(READ_AT * 1000)
    for (ts, key, value, headers), line in zip(got, lines, strict=True):
        assert (ts, key, headers) == (ms, None, [])
        doc = json.loads(value)
        assert value == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        assert message(value) == line
        assert doc["@timestamp"] == "2024-05-01T12:51:30.123Z"
        assert f.line_at(doc["offset"], len(line)) == line
        assert (doc["host"], doc["path"]) == ("web-1", "/var/log/app/app.log")
        assert doc["fields"] == {"env": "prod", "team": "core"}
        assert doc["kubernetes"] == KUBE
        assert list(doc)[:2] == ["message", "@timestamp"] or "message_encoding" in doc
        assert list(doc)[-1] == "offset"


@_SETTINGS
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=30))
def test_json_message_of_random_bytes_round_trips(lines: list[bytes]) -> None:
    """Any bytes at all (newlines of joined records included) come back from the envelope."""
    c = Chunk(lines, sum(map(len, lines)), Source("/l", 0), READ_AT, 0, 0, _packed(lines))
    got = records_of(list(Records(kafka_cfg(format="json")).batches([c], 1 << 20, 10_000)))
    assert [message(v) for _, _, v, _ in got] == lines


def _packed(lines: list[bytes]) -> array[int]:
    """Explicit offsets, as a chunk of joined or irregular lines carries them."""
    out, at = array("q"), 7
    for x in lines:
        out.append(at)
        at += len(x) + 3
    return out


@_SETTINGS
@given(_lines, st.sampled_from([b"\n", b"\r\n"]), st.binary(max_size=30))
def test_headers_and_path_key_carry_where_each_line_is(
    lines: list[bytes], eol: bytes, head: bytes
) -> None:
    """With headers the value stays the raw line; host, path, fields.*, kubernetes.* and the
    offset of the line in the file are headers, in that order (offset last); key = path."""
    f = File("/var/log/app/app.log", lines, eol, head)
    cfg = kafka_cfg(headers=ALL_HEADERS, key="path")
    recs = Records(cfg, [Route("logs", "raw", {"env": "prod"})])
    got = records_of(list(recs.batches([f.chunk], 1 << 20, 10_000)))
    static = [
        ("host", b"web-1"),
        ("path", b"/var/log/app/app.log"),
        ("fields.env", b"prod"),
        *((f"kubernetes.{k}", v.encode()) for k, v in KUBE.items()),
    ]
    for (ts, key, value, headers), line in zip(got, lines, strict=True):
        assert (ts, key, value) == (int(READ_AT * 1000), b"/var/log/app/app.log", line)
        assert headers[:-1] == static
        name, offset = headers[-1]
        assert name == "offset"
        assert offset == str(int(offset)).encode()
        assert f.line_at(int(offset), len(line)) == line


@pytest.mark.parametrize(
    ("headers", "names"),
    [
        (("path",), ["path"]),
        (("offset",), ["offset"]),
        (("kubernetes", "host"), ["host", *(f"kubernetes.{k}" for k in KUBE)]),
        (("fields",), ["fields.a", "fields.b"]),
    ],
)
def test_only_the_headers_asked_for(headers: tuple[str, ...], names: list[str]) -> None:
    """Each header group appears only when listed, in the documented order."""
    cfg = kafka_cfg(headers=headers)
    recs = Records(cfg, [Route("logs", "raw", {"a": "1", "b": "2"})])
    c = Chunk([b"x", b"y" * 200], 201, Source("/p", 0), READ_AT, 10_000_000)
    got = records_of(list(recs.batches([c], 1 << 20, 100)))
    assert [[n for n, _ in h] for _, _, _, h in got] == [names, names]


def test_offsets_of_every_digit_count() -> None:
    """Offset headers and JSON offsets are right across powers of ten in one chunk."""
    lines = [b"ab"] * 40
    c = Chunk(lines, 80, Source("/p", 0), READ_AT, 9_999_990 - 3 * 12, 1)
    starts = list(c.starts())
    assert len(str(starts[0])) < len(str(starts[-1]))
    raw = records_of(list(Records(kafka_cfg(headers=("offset",))).batches([c], 1 << 20, 100)))
    assert [int(h[-1][1]) for _, _, _, h in raw] == starts
    js = records_of(list(Records(kafka_cfg(format="json")).batches([c], 1 << 20, 100)))
    assert [json.loads(v)["offset"] for _, _, v, _ in js] == starts


@_SETTINGS
@given(
    st.lists(
        st.tuples(st.lists(st.binary(max_size=50), min_size=1, max_size=20), st.integers(-9, 5000)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["raw", "json"]),
    st.sampled_from([(), ("path", "offset")]),
)
def test_each_record_has_its_chunks_read_time(
    parts: list[tuple[list[bytes], int]], fmt: str, headers: tuple[str, ...]
) -> None:
    """A take of chunks read at different times (a clock step back included) gives each
    record its own chunk's read time as its Kafka timestamp (and @timestamp)."""
    chunks = [
        Chunk(lines, sum(map(len, lines)), Source("/p", 0), READ_AT + dt / 1000, 0)
        for lines, dt in parts
    ]
    cfg = kafka_cfg(format=fmt, headers=() if fmt == "json" else headers)
    got = records_of(list(Records(cfg).batches(chunks, 1 << 20, 10_000)))
    expect = [int(c.read_at * 1000) for c in chunks for _ in c.lines]
    assert [ts for ts, _, _, _ in got] == expect
    if fmt == "json":
        stamps = [json.loads(v)["@timestamp"] for _, _, v, _ in got]
        assert stamps == [rfc3339(ms) for ms in expect]
    else:
        assert [v for _, _, v, _ in got] == [x for c in chunks for x in c.lines]


def test_raw_without_headers_or_key_is_the_plain_encoding() -> None:
    """Raw records without headers or key are exactly the lines, no key, no headers."""
    c = Chunk([b"a", b"", b"\xff"], 2, Source("/p", 0), READ_AT)
    [batch] = Records(kafka_cfg()).batches([c], 1 << 20, 100)
    assert batch.partition is None
    assert records_of([batch]) == [(int(READ_AT * 1000), None, v, []) for v in c.lines]


@pytest.mark.parametrize(
    ("key", "expect"),
    [("host", b"web-1"), ("path", b"/var/log/b.log"), ("field:team", b"core"), ("none", None)],
)
@pytest.mark.parametrize("fmt", ["raw", "json"])
def test_record_key_and_partition(key: str, expect: bytes | None, fmt: str) -> None:
    """The record key is the host, the path or a static field; a keyed batch carries the
    partition hash Kafka's default partitioner would use for that key."""
    cfg = kafka_cfg(key=key, format=fmt)
    recs = Records(cfg, [Route("logs", fmt, {"team": "core"})])
    c = Chunk([b"x", b"y"], 2, Source("/var/log/b.log", 0), READ_AT)
    [batch] = recs.batches([c], 1 << 20, 100)
    assert {k for _, k, _, _ in records_of([batch])} == {expect}
    assert batch.partition == (None if expect is None else partition_hash(expect))
    assert recs.key_of(c.source) == expect


@pytest.mark.parametrize(
    ("key", "java"),
    [(b"1", -1993445489), (b"12", 126087238), (b"123", -267702483), (b"12345", -1188365604)],
)
def test_partition_hash_is_the_java_clients(key: bytes, java: int) -> None:
    """murmur2 agrees with the Java client's Utils.murmur2 (its published values), and the
    partition hash is it made positive as Utils.toPositive does."""
    assert ctypes.c_int32(compat.murmur2(key)).value == java
    assert partition_hash(key) == java & 0x7FFFFFFF


def test_one_key_per_batch() -> None:
    """Interleaved chunks of two files keyed by path never share a batch, and the group
    function keeps them apart in the queue."""
    a, b = Source("/a.log", 0), Source("/b.log", 0)
    chunks = [Chunk([b"%d" % i], 1, src, READ_AT) for i, src in enumerate([a, a, b, a, b, b])]
    recs = Records(kafka_cfg(key="path"))
    assert recs.group is not None
    assert recs.group(a) != recs.group(b)
    assert recs.group(a) == recs.group(Source("/a.log", 0))
    batches = list(recs.batches(chunks, 1 << 20, 100))
    keys = [{k for _, k, _, _ in records_of([x])} for x in batches]
    assert keys == [{b"/a.log"}, {b"/b.log"}, {b"/a.log"}, {b"/b.log"}]
    assert [x.partition for x in batches] == [partition_hash(next(iter(k))) for k in keys]  # type: ignore[arg-type]


def test_no_grouping_when_every_record_is_alike() -> None:
    """Takes need no grouping when every input has one format and one key (none, the
    host, or a field all inputs share); they do for paths, formats or keys that differ."""
    two = [Route("logs", "raw", {"t": "a"})] * 2
    assert Records(kafka_cfg(), two).group is None
    assert Records(kafka_cfg(key="host"), two).group is None
    assert Records(kafka_cfg(key="field:t"), two).group is None
    assert Records(kafka_cfg(key="path"), two).group is not None
    mixed = Records(kafka_cfg(), [Route("logs", "raw", {}), Route("logs", "json", {})])
    assert mixed.group is not None
    apart = [Route("logs", "raw", {"t": "a"}), Route("logs", "raw", {"t": "b"})]
    assert Records(kafka_cfg(key="field:t"), apart).group is not None


def test_inputs_with_different_formats_share_no_batch() -> None:
    """A take mixing an input shipped raw and one shipped as JSON gives a batch of each."""
    recs = Records(kafka_cfg(), [Route("logs", "raw", {}), Route("logs", "json", {"i": "1"})])
    chunks = [
        Chunk([b"r"], 1, Source("/r", 0), READ_AT),
        Chunk([b"j"], 1, Source("/j", 1), READ_AT),
    ]
    raw, js = (records_of([b]) for b in recs.batches(chunks, 1 << 20, 100))
    assert [v for _, _, v, _ in raw] == [b"r"]
    assert json.loads(js[0][2])["fields"] == {"i": "1"}


@_SETTINGS
@given(
    st.lists(st.binary(max_size=3000), min_size=1, max_size=50),
    st.integers(200, 8000),
    st.integers(1, 30),
    st.tuples(
        st.sampled_from(["raw", "json"]),
        st.sampled_from([(), ("path", "offset")]),
        st.sampled_from(["none", "path"]),
    ),
)
def test_batches_respect_limits_and_account_for_every_line(
    lines: list[bytes], max_bytes: int, max_lines: int, how: tuple[str, tuple[str, ...], str]
) -> None:
    """Batches stay within max_bytes and max_lines; a record too long for any batch comes
    alone without payload; lines and raw bytes add up to the take's exactly, in order."""
    fmt, headers, key = how
    mid = len(lines) // 2
    chunks = [
        Chunk(part, sum(map(len, part)), Source("/p", 0), READ_AT + i)
        for i, part in enumerate((lines[:mid], lines[mid:]))
    ]
    cfg = kafka_cfg(format=fmt, headers=() if fmt == "json" else headers, key=key)
    batches = list(Records(cfg).batches(chunks, max_bytes, max_lines))
    assert sum(b.lines for b in batches) == len(lines)
    assert sum(b.nbytes for b in batches) == sum(map(len, lines))
    at = 0
    for b in batches:
        assert b.lines <= max_lines
        mine = lines[at : at + b.lines]
        assert b.nbytes == sum(map(len, mine))
        if b.payload is None:
            assert b.lines == 1
        else:
            assert len(b.payload) <= max_bytes
            values = [v for _, _, v, _ in records_of([b])]
            assert (values if fmt == "raw" else list(map(message, values))) == mine
        at += b.lines


def test_too_long_raw_line_is_flagged() -> None:
    """A raw line whose batch would exceed max_bytes comes back without payload."""
    big = b"x" * 5000
    c = Chunk([b"a", big, b"b"], 5002, Source("/p", 0), READ_AT)
    batches = list(Records(kafka_cfg()).batches([c], 4000, 100))
    assert [(b.payload is None, b.lines, b.nbytes) for b in batches] == [
        (False, 1, 1),
        (True, 1, 5000),
        (False, 1, 1),
    ]
    assert batch_size([big]) > 4000


def test_overhead_follows_the_record_format() -> None:
    """The per-line overhead estimate is the bare record's for raw and grows with envelopes."""
    c = Chunk([b"x" * 100] * 10, 1000, Source("/var/log/app.log", 0), READ_AT)
    raw = Records(kafka_cfg())
    list(raw.batches([c], 1 << 20, 100))
    assert raw.overhead == RECORD_OVERHEAD
    js = Records(kafka_cfg(format="json"))
    list(js.batches([c], 1 << 20, 100))
    assert js.overhead > RECORD_OVERHEAD + 100


def test_downward_api_and_fields_from_the_config() -> None:
    """Kubernetes Downward API variables and static fields (input over global) reach the
    envelope and the headers as the config derives them from the environment."""
    text = """
inputs:
  - paths: ["/var/log/a/*.log"]
    format: json
    fields: {team: payments, tier: "1"}
  - paths: ["/var/log/b/*.log"]
kafka:
  bootstrap_servers: ["127.0.0.1:9092"]
  topic: logs
  fields: {env: prod, team: platform}
"""
    env = {
        "KUBERNETES_POD_NAME": "web-0",
        "KUBERNETES_NAMESPACE": "shop",
        "KUBERNETES_NODE_NAME": "n1",
        "KUBERNETES_POD_UID": "0b1c",
        "KUBERNETES_CONTAINER_NAME": "app",
        "SHIPPER_HOSTNAME": "box",
    }
    cfg = parse(text, env=env)
    recs = Records(cfg.kafka, cfg.routes)
    a = Chunk([b"hello"], 5, Source("/var/log/a/x.log", 0), READ_AT)
    [(_, _, value, _)] = records_of(list(recs.batches([a], 1 << 20, 100)))
    doc = json.loads(value)
    assert doc["fields"] == {"env": "prod", "team": "payments", "tier": "1"}
    assert doc["kubernetes"] == {
        "pod_name": "web-0",
        "namespace": "shop",
        "node_name": "n1",
        "pod_uid": "0b1c",
        "container_name": "app",
    }
    assert doc["host"] == "box"
    b = Chunk([b"raw"], 3, Source("/var/log/b/y.log", 1), READ_AT)
    [(_, _, value, _)] = records_of(list(recs.batches([b], 1 << 20, 100)))
    assert value == b"raw"


def test_envelope_without_fields_or_kubernetes() -> None:
    """Outside Kubernetes and without fields the envelope has neither key."""
    cfg = replace(kafka_cfg(format="json"), kubernetes={})
    c = Chunk([b"m"], 1, Source("/p", 0), READ_AT)
    [(_, _, value, _)] = records_of(list(Records(cfg).batches([c], 1 << 20, 100)))
    assert value == (
        b'{"message":"m","@timestamp":"2024-05-01T12:51:30.123Z","host":"web-1",'
        b'"path":"/p","offset":0}'
    )


def test_undecodable_file_name() -> None:
    """A file name that is not UTF-8 is its raw bytes in the path header and key, and a
    JSON string that decodes to Python's name for it in the envelope."""
    path = os.fsdecode(b"/var/log/caf\xe9.log")
    c = Chunk([b"x"], 1, Source(path, 0), READ_AT)
    [(_, key, _, headers)] = records_of(
        list(Records(kafka_cfg(headers=("path",), key="path")).batches([c], 1 << 20, 10))
    )
    assert key == b"/var/log/caf\xe9.log"
    assert headers == [("path", b"/var/log/caf\xe9.log")]
    [(_, _, value, _)] = records_of(
        list(Records(kafka_cfg(format="json")).batches([c], 1 << 20, 10))
    )
    assert json.loads(value)["path"] == path
    assert value.isascii()


@pytest.mark.parametrize("ms", [0, 999, 1_714_567_890_123, 253_402_300_799_999, 1_700_000_000_000])
def test_rfc3339_is_utc_with_milliseconds(ms: int) -> None:
    """@timestamp is RFC 3339 in UTC with exactly three fraction digits and a Z."""
    text = rfc3339(ms)
    assert text.endswith("Z")
    assert len(text.split(".")[1]) == 4
    back = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert round(back.timestamp() * 1000) == ms
