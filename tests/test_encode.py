"""RecordBatch v2 encoder: byte-identical to kafka-python's builder and decodable by its reader."""

from __future__ import annotations

import gzip
import itertools
import random
import struct
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import encode_varint

from shipper.kafka import encode
from shipper.kafka.encode import (
    COMPRESSION,
    GZIP_LEVEL,
    HEADER_SIZE,
    available_compressions,
    batch_size,
    compression_code,
    encode_batch,
    split_batches,
    varint,
)

TS = 1_700_000_000_123

# Lines of all the interesting lengths: empty, 1-byte varint lengths (< 64),
# 2-byte (< 8192), around the cache limit (16384) and beyond it.
_lengths = st.one_of(
    st.integers(0, 70),
    st.integers(60, 8300),
    st.sampled_from([63, 64, 127, 128, 8191, 8192, 16383, 16384, 16385, 20000]),
)
# The encoder cares about lengths, not content: a long line repeats a short random pattern,
# so a list of 16 KiB lines stays within hypothesis's entropy budget (data_too_large).
_line = st.builds(
    lambda n, pattern: (pattern * (n // len(pattern) + 1))[:n],
    _lengths,
    st.binary(min_size=1, max_size=64),
)
_lines = st.lists(_line, min_size=1, max_size=80)
# Record counts crossing the offset-delta varint boundaries (64 and 8192), with small values.
_many = st.builds(
    lambda n, vals: [vals[i % len(vals)] for i in range(n)],
    st.integers(1, 9000),
    st.lists(st.binary(max_size=300), min_size=1, max_size=10),
)


def reference(lines: list[bytes], ts: int, compression: int = 0) -> bytes:
    """kafka-python's own encoding, with partitionLeaderEpoch set to -1 like ours."""
    b = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, v in enumerate(lines):
        assert b.append(i, timestamp=ts, key=None, value=v, headers=[]) is not None
    out = bytes(b.build())
    # kafka-python writes 0, the Java client -1 (NO_PARTITION_LEADER_EPOCH); the broker
    # overwrites it either way and it is outside the CRC. It is the only difference.
    return out[:12] + struct.pack(">i", -1) + out[16:]


def decode(data: bytes) -> list[bytes]:
    records = MemoryRecords(data)
    batch = records.next_batch()
    assert isinstance(batch, DefaultRecordBatch)
    assert batch.validate_crc()
    assert records.next_batch() is None
    out = []
    for i, rec in enumerate(batch):
        assert rec.offset == i
        assert rec.timestamp == TS
        assert rec.key is None
        assert rec.headers == []
        out.append(bytes(rec.value))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_lines)
def test_byte_identical_to_kafka_python(lines: list[bytes]) -> None:
    data = encode_batch(lines, TS)
    assert data == reference(lines, TS)
    assert len(data) == batch_size(lines)
    assert decode(data) == lines


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_many)
def test_many_records_cross_offset_varint_sizes(lines: list[bytes]) -> None:
    data = encode_batch(lines, TS)
    assert data == reference(lines, TS)
    assert len(data) == batch_size(lines)


def test_header_fields() -> None:
    data = encode_batch([b"a", b"", b"c" * 300], TS)
    (base, length, epoch, magic, _crc, attrs, last, first_ts, max_ts, pid, pepoch, seq, count) = (
        struct.unpack_from(">qiibIhiqqqhii", data)
    )
    assert (base, length, epoch, magic) == (0, len(data) - 12, -1, 2)
    assert (attrs, last, first_ts, max_ts) == (0, 2, TS, TS)
    assert (pid, pepoch, seq, count) == (-1, -1, -1, 3)
    assert HEADER_SIZE == 61


def test_offset_classes_beyond_2_pow_20() -> None:
    lines = [b""] * ((1 << 20) + 3)
    data = encode_batch(lines, TS)
    assert len(data) == batch_size(lines)
    batch = DefaultRecordBatch(data)
    assert batch.validate_crc()
    assert batch.last_offset_delta == len(lines) - 1


@pytest.mark.parametrize(
    "n", [0, 1, -1, 63, 64, -65, 8191, 8192, 1 << 40, -(1 << 63), (1 << 63) - 1]
)
def test_varint_matches_kafka_python(n: int) -> None:
    out = bytearray()
    encode_varint(n, out.append)
    assert varint(n) == bytes(out)


def test_empty_batch_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one record"):
        encode_batch([], TS)


# --- compression ---------------------------------------------------------------------

_AVAILABLE = available_compressions()
_CODECS = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(name not in _AVAILABLE, reason=f"{name} codec not installed"),
    )
    for name in COMPRESSION
    if name != "none"
]


def _same_gzip(data: bytes, compresslevel: int | None = None) -> bytes:
    return gzip.compress(data, GZIP_LEVEL, mtime=0)


@pytest.mark.parametrize("name", _CODECS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_lines)
def test_compressed_identical_and_decodable(name: str, lines: list[bytes]) -> None:
    code = compression_code(name)
    data = encode_batch(lines, TS, code)
    # kafka-python's gzip uses level 9 and stamps the time into the gzip header; give
    # it our deterministic gzip so the framing can be compared byte for byte.
    with mock.patch("kafka.record.default_records.gzip_encode", _same_gzip):
        assert data == reference(lines, TS, code)
    assert decode(data) == lines


@pytest.mark.parametrize("name", _CODECS)
def test_compressible_batch_is_compressed(name: str) -> None:
    lines = [b"GET /index.html HTTP/1.1 200 " + str(i % 10).encode() * 40 for i in range(2000)]
    data = encode_batch(lines, TS, compression_code(name))
    assert DefaultRecordBatch(data).compression_type == COMPRESSION[name]
    assert len(data) < batch_size(lines) / 3
    assert decode(data) == lines


def test_incompressible_batch_goes_uncompressed() -> None:
    lines = [random.Random(i).randbytes(300) for i in range(7)]
    data = encode_batch(lines, TS, COMPRESSION["gzip"])
    assert DefaultRecordBatch(data).compression_type == 0
    assert data == encode_batch(lines, TS)


def test_unknown_or_missing_codec() -> None:
    with pytest.raises(ValueError, match="unknown"):
        compression_code("brotli")
    assert compression_code("none") == 0
    assert compression_code("gzip") == 1
    for name in set(COMPRESSION) - set(_AVAILABLE):
        with pytest.raises(ValueError, match="not installed"):
            compression_code(name)


# --- splitting -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(_line, min_size=1, max_size=60),
    max_bytes=st.integers(HEADER_SIZE + 8, 60_000),
    max_lines=st.integers(1, 70),
)
def test_split_respects_limits_and_order(
    lines: list[bytes], max_bytes: int, max_lines: int
) -> None:
    runs = split_batches(lines, max_bytes, max_lines)
    assert [v for run, _ in runs for v in run] == lines
    for run, raw in runs:
        assert run
        assert raw == sum(map(len, run))
        assert len(run) <= max_lines
        if len(run) > 1:
            assert batch_size(run) <= max_bytes
        # Greedy: a run only ends early when the next line would not have fit.
    for (run, _), (nxt, _) in itertools.pairwise(runs):
        if len(run) < max_lines:
            assert batch_size([*run, nxt[0]]) > max_bytes - 2 * len(run) - 2


def test_split_fast_path_returns_input() -> None:
    lines = [b"x" * 100] * 100
    [(run, raw)] = split_batches(lines, 1 << 20, 1000)
    assert run is lines
    assert raw == 10_000


def test_split_single_oversized_line_is_isolated() -> None:
    big = b"y" * 5000
    runs = split_batches([b"a", big, b"b"], 4000, 100)
    assert [r for r, _ in runs] == [[b"a"], [big], [b"b"]]
    assert batch_size([big]) > 4000


def test_split_exact_fit() -> None:
    lines = [b"z" * 50] * 10
    size = batch_size(lines)
    assert len(split_batches(lines, size, 100)) == 1
    assert len(split_batches(lines, size - 1, 100)) == 2


def test_tables_stay_bounded() -> None:
    """The per-length tables cache short lengths only, and what they cache is right."""
    encode_batch([b"q" * 100_000, b"r" * 16384, b"s" * 16383], TS)
    assert 100_000 not in encode._KEYVLEN
    assert 16384 not in encode._KEYVLEN
    assert encode._KEYVLEN[16383] == b"\x01" + varint(16383)  # zigzag: 4 bytes
    assert all(n < encode._TABLE_LIMIT for n in encode._KEYVLEN)
    assert all(v == b"\x01" + varint(n) for n, v in encode._KEYVLEN.items())
