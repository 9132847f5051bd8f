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
from kafka.record.default_records import DefaultRecordBatch
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
    encode_pieces,
    encode_records,
    encode_values,
    record_batch_size,
    split_batches,
    split_records,
    split_values,
    ts_width,
    varint,
)
from tests.support.reference import Record, decode_batch, reference_batch

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
    """kafka-python's own encoding of ``lines`` as bare values, all at timestamp ``ts``."""
    return reference_batch([(ts, None, v, []) for v in lines], compression)


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
    """Bare values at one timestamp: the same bytes as kafka-python's builder, exact size."""
    data = encode_batch(lines, TS)
    assert data == reference(lines, TS)
    assert len(data) == batch_size(lines)
    assert decode(data) == lines


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_many)
def test_many_records_cross_offset_varint_sizes(lines: list[bytes]) -> None:
    """Record counts across the offset-delta varint sizes encode like kafka-python's."""
    data = encode_batch(lines, TS)
    assert data == reference(lines, TS)
    assert len(data) == batch_size(lines)


def test_header_fields() -> None:
    """The batch header: offsets, lengths, epoch -1, magic 2, timestamps and counts."""
    data = encode_batch([b"a", b"", b"c" * 300], TS)
    (base, length, epoch, magic, _crc, attrs, last, first_ts, max_ts, pid, pepoch, seq, count) = (
        struct.unpack_from(">qiibIhiqqqhii", data)
    )
    assert (base, length, epoch, magic) == (0, len(data) - 12, -1, 2)
    assert (attrs, last, first_ts, max_ts) == (0, 2, TS, TS)
    assert (pid, pepoch, seq, count) == (-1, -1, -1, 3)
    assert HEADER_SIZE == 61


def test_offset_classes_beyond_2_pow_20() -> None:
    """Over 2**20 records (4-byte offset deltas) still make a valid batch of the computed size."""
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
    """Zigzag varints are kafka-python's, across every width and both signs."""
    out = bytearray()
    encode_varint(n, out.append)
    assert varint(n) == bytes(out)


def test_empty_batch_is_refused() -> None:
    """A batch of no records is an error, not an empty batch."""
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
    """Compressed batches are kafka-python's bytes (same gzip level) and decode to the values."""
    code = compression_code(name)
    data = encode_batch(lines, TS, code)
    # kafka-python's gzip uses level 9 and stamps the time into the gzip header; give
    # it our deterministic gzip so the framing can be compared byte for byte.
    with mock.patch("kafka.record.default_records.gzip_encode", _same_gzip):
        assert data == reference(lines, TS, code)
    assert decode(data) == lines


@pytest.mark.parametrize("name", _CODECS)
def test_compressible_batch_is_compressed(name: str) -> None:
    """A compressible batch goes out compressed, and much smaller."""
    lines = [b"GET /index.html HTTP/1.1 200 " + str(i % 10).encode() * 40 for i in range(2000)]
    data = encode_batch(lines, TS, compression_code(name))
    assert DefaultRecordBatch(data).compression_type == COMPRESSION[name]
    assert len(data) < batch_size(lines) / 3
    assert decode(data) == lines


def test_incompressible_batch_goes_uncompressed() -> None:
    """A batch compression would not shrink goes out uncompressed, as kafka-python does."""
    lines = [random.Random(i).randbytes(300) for i in range(7)]
    data = encode_batch(lines, TS, COMPRESSION["gzip"])
    assert DefaultRecordBatch(data).compression_type == 0
    assert data == encode_batch(lines, TS)


def test_unknown_or_missing_codec() -> None:
    """Unknown compressions and codecs that are not installed are refused by name."""
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
    """Runs keep the order, stay within both limits, and end early only when they must."""
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
    """Lines that fit in one batch come back as the very list given."""
    lines = [b"x" * 100] * 100
    [(run, raw)] = split_batches(lines, 1 << 20, 1000)
    assert run is lines
    assert raw == 10_000


def test_split_single_oversized_line_is_isolated() -> None:
    """A line too long for any batch comes alone, between the runs around it."""
    big = b"y" * 5000
    runs = split_batches([b"a", big, b"b"], 4000, 100)
    assert [r for r, _ in runs] == [[b"a"], [big], [b"b"]]
    assert batch_size([big]) > 4000


def test_split_exact_fit() -> None:
    """A batch exactly max_bytes long is one run; one byte less makes two."""
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


# --- timestamps per record, keys and headers ------------------------------------------

# Timestamps around a base: equal, a few ms apart, seconds, backwards (a clock step), huge.
_ts = st.one_of(
    st.integers(TS - 70, TS + 70),
    st.integers(TS - 10_000, TS + 10_000),
    st.sampled_from([TS, TS + 63, TS + 64, TS - 64, TS - 65, TS + 8192, 0, 1 << 41]),
)


@st.composite
def _runs(draw: st.DrawFn, n: int) -> list[tuple[int, int]]:
    """Timestamp runs ``(count, ts)`` covering ``n`` records."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=min(5, n - 1))))
    bounds = [0, *cuts, n]
    return [(b - a, draw(_ts)) for a, b in itertools.pairwise(bounds) if b > a]


def _columns(rows: list[list[bytes]]) -> list[list[bytes]]:
    """Pieces by record -> pieces by position (column ``j``: piece ``j`` of every record)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _stamped(runs: list[tuple[int, int]]) -> list[int]:
    return [ts for count, ts in runs for _ in range(count)]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), _lines)
def test_values_with_timestamp_runs_match_kafka_python(
    data: st.DataObject, lines: list[bytes]
) -> None:
    """Values with one timestamp per run (a chunk each) are kafka-python's bytes with those
    timestamps: base = first, max = largest, per-record deltas of any sign and width."""
    runs = data.draw(_runs(len(lines)))
    got = encode_values(lines, runs)
    stamps = _stamped(runs)
    assert got == reference_batch([(t, None, v, []) for t, v in zip(stamps, lines, strict=True)])
    assert [r[0] for r in decode_batch(got)] == stamps


def _section(headers: list[tuple[str, bytes]]) -> bytes:
    """A record's headers section: count varint, then name and value, each length-prefixed."""
    out = varint(len(headers))
    for name, value in headers:
        out += varint(len(name.encode())) + name.encode() + varint(len(value)) + value
    return out


_header = st.tuples(st.text(st.characters(codec="utf-8"), max_size=20), st.binary(max_size=100))
_record = st.tuples(_line, st.lists(_header, max_size=4), st.integers(1, 4))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.lists(_record, min_size=1, max_size=70),
    st.one_of(st.none(), st.binary(max_size=300)),
    st.integers(1, 4),
)
def test_records_with_keys_and_headers_match_kafka_python(
    data: st.DataObject,
    records: list[tuple[bytes, list[tuple[str, bytes]], int]],
    key: bytes | None,
    width: int,
) -> None:
    """Values given as pieces, a key, any headers and timestamp runs: kafka-python's bytes for
    the same records, decodable, and ``record_batch_size`` exact for one record."""
    runs = data.draw(_runs(len(records)))
    rows: list[list[bytes]] = []
    vlens, hlens = [], []
    for value, headers, _ in records:
        cut = data.draw(
            st.lists(st.integers(0, len(value)), min_size=width - 1, max_size=width - 1)
        )
        bounds = [0, *sorted(cut), len(value)]
        section = _section(headers)
        rows.append([*(value[a:b] for a, b in itertools.pairwise(bounds)), section])
        vlens.append(len(value))
        hlens.append(len(section))
    columns = _columns(rows)
    got = encode_records(columns, vlens, hlens, runs, key=key)
    expect: list[Record] = [
        (t, key, value, headers)
        for t, (value, headers, _) in zip(_stamped(runs), records, strict=True)
    ]
    assert got == reference_batch(expect)
    assert decode_batch(got) == expect
    one = encode_records([c[:1] for c in columns], vlens[:1], hlens[:1], [(1, TS)], key=key)
    assert len(one) == record_batch_size(vlens[0], hlens[0], key)


def test_constant_header_length_is_the_same_as_a_list() -> None:
    """One header length for every record encodes like the same length given per record."""
    section = _section([("path", b"/var/log/a.log")])
    columns = [[b"a", b"bb", b""], [section] * 3]
    runs = [(2, TS), (1, TS + 5)]
    assert encode_records(columns, [1, 2, 0], len(section), runs, key=b"k") == encode_records(
        columns, [1, 2, 0], [len(section)] * 3, runs, key=b"k"
    )


def test_records_with_compression_decode() -> None:
    """Keyed records with headers compress (gzip) and decode to the same records."""
    section = _section([("offset", b"12345")])
    values = [b"GET /index.html 200 %d" % (i % 7) for i in range(500)]
    columns = [values, [section] * len(values)]
    data = encode_records(
        columns, list(map(len, values)), len(section), [(500, TS)], COMPRESSION["gzip"], key=b"k"
    )
    assert DefaultRecordBatch(data).compression_type == COMPRESSION["gzip"]
    assert decode_batch(data) == [(TS, b"k", v, [("offset", b"12345")]) for v in values]


def test_malformed_runs_and_pieces_are_refused() -> None:
    """Timestamp runs must cover the records exactly, and every column hold a piece of each
    record."""
    with pytest.raises(ValueError, match="do not cover"):
        encode_values([b"a", b"b"], [(1, TS)])
    with pytest.raises(ValueError, match="do not cover"):
        encode_values([b"a"], [(1, TS), (0, TS)])
    with pytest.raises(ValueError, match="columns of"):
        encode_records([[b"a"], []], [1], 1, [(1, TS)])
    with pytest.raises(ValueError, match="columns of"):
        encode_pieces([[b"a"], [b"b", b"c"]], [2], [(1, TS)])
    with pytest.raises(ValueError, match="at least one record"):
        encode_records([[]], [], 1, [])
    with pytest.raises(ValueError, match="at least one record"):
        encode_pieces([[]], [], [])


@pytest.mark.parametrize(
    ("runs", "width"),
    [
        ([(3, TS)], 1),
        ([(1, TS), (1, TS + 63)], 1),
        ([(1, TS), (1, TS - 64)], 2),  # -64 takes 1 byte, but +64 (the other way) 2
        ([(1, TS), (1, TS + 64)], 2),
        ([(1, TS), (1, TS + 9000)], 3),
        ([(1, TS), (1, TS + 10_000), (1, TS - 10_000)], 3),
    ],
)
def test_ts_width_bounds_every_delta(runs: list[tuple[int, int]], width: int) -> None:
    """The timestampDelta width bound covers a delta from any record to any other."""
    assert ts_width(runs) == width


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.lists(_record, min_size=1, max_size=60),
    st.one_of(st.none(), st.binary(max_size=50)),
    st.integers(HEADER_SIZE + 8, 40_000),
    st.integers(1, 70),
)
def test_split_records_respects_limits(
    data: st.DataObject,
    records: list[tuple[bytes, list[tuple[str, bytes]], int]],
    key: bytes | None,
    max_bytes: int,
    max_lines: int,
) -> None:
    """Runs of records with keys, headers and timestamp runs stay within both limits once
    encoded, in order; a record alone over the limit comes as a run of its own."""
    runs = data.draw(_runs(len(records)))
    stamps = _stamped(runs)
    sections = [_section(h) for _, h, _ in records]
    vlens = [len(v) for v, _, _ in records]
    hlens = list(map(len, sections))
    cuts = split_records(vlens, hlens, max_bytes, max_lines, key, ts_width(runs))
    assert [i for a, b in cuts for i in range(a, b)] == list(range(len(records)))
    for a, b in cuts:
        assert b - a <= max_lines
        columns = [[v for v, _, _ in records[a:b]], sections[a:b]]
        got = encode_records(
            columns, vlens[a:b], hlens[a:b], [(1, t) for t in stamps[a:b]], key=key
        )
        if b - a > 1:
            assert len(got) <= max_bytes
        else:
            assert (len(got) > max_bytes) == (
                record_batch_size(vlens[a], hlens[a], key) > max_bytes
            )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.lists(_line, min_size=1, max_size=60), st.integers(HEADER_SIZE + 8, 40_000))
def test_split_batches_bounds_wider_timestamp_deltas(
    data: st.DataObject, lines: list[bytes], max_bytes: int
) -> None:
    """With timestamp runs whose deltas take more than one byte, runs still fit once encoded."""
    runs = data.draw(_runs(len(lines)))
    stamps = _stamped(runs)
    a = 0
    for run, _ in split_batches(lines, max_bytes, 1000, ts_width(runs)):
        b = a + len(run)
        got = encode_values(run, [(1, t) for t in stamps[a:b]])
        assert len(run) == 1 or len(got) <= max_bytes
        a = b


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.lists(_line, min_size=1, max_size=70),
    st.one_of(st.none(), st.binary(max_size=300)),
    st.integers(1, 4),
    st.sampled_from([(b"", b""), (b'{"message":"', b"}"), (b"<", b""), (b"", b">>")]),
)
def test_values_in_pieces_with_key_and_ends_match_kafka_python(
    data: st.DataObject,
    values: list[bytes],
    key: bytes | None,
    width: int,
    ends: tuple[bytes, bytes],
) -> None:
    """Values given as pieces between a constant start and end, with a key and timestamp
    runs: kafka-python's bytes for the whole values, and split_values bounds them."""
    before, after = ends
    runs = data.draw(_runs(len(values)))
    rows = []
    for v in values:
        cut = data.draw(st.lists(st.integers(0, len(v)), min_size=width - 1, max_size=width - 1))
        bounds = [0, *sorted(cut), len(v)]
        rows.append([v[a:b] for a, b in itertools.pairwise(bounds)])
    columns = _columns(rows)
    whole = [before + v + after for v in values]
    vlens = list(map(len, whole))
    got = encode_pieces(columns, vlens, runs, key=key, before=before, after=after)
    expect: list[Record] = [(t, key, v, []) for t, v in zip(_stamped(runs), whole, strict=True)]
    assert got == reference_batch(expect)
    if width == 1 and not before and not after:
        assert got == encode_values(values, runs, key=key)
    max_bytes = data.draw(st.integers(HEADER_SIZE + 8, 20_000))
    stamps = _stamped(runs)
    for a, b in split_values(vlens, max_bytes, 30, ts_width(runs), key):
        one = encode_pieces(
            [c[a:b] for c in columns],
            vlens[a:b],
            [(1, t) for t in stamps[a:b]],
            key=key,
            before=before,
            after=after,
        )
        assert b - a <= 30
        assert b - a == 1 or len(one) <= max_bytes
        if b - a == 1:
            assert len(one) == record_batch_size(vlens[a], 1, key)


def test_long_keys_stay_exact() -> None:
    """Keys longer than the prebuilt tables cover (long paths) still encode exactly."""
    for size in (1, 63, 64, 200, 9000):
        key = b"k" * size
        values = [b"v" * 10, b"w" * 70]
        runs = [(1, TS), (1, TS + 100)]
        expect: list[Record] = [(TS, key, values[0], []), (TS + 100, key, values[1], [])]
        assert encode_values(values, runs, key=key) == reference_batch(expect)
