"""The Kafka record layout: RecordBatch v2 bytes for whole lists of records, and every size
overhead of that layout, with per-chunk, not per-line, work.

Two writers share the tables: ``encode_values`` for records that are a bare value (no key, no
headers: the raw fast path) and ``encode_records`` for records with a key, headers, or values
given as several pieces each (envelopes). Both take the records' timestamps as runs of
``(count, timestamp_ms)`` (one run per chunk), written as per-record timestampDelta.

This is the one place that knows how big a record or a batch is. It imports no Kafka client
code (codecs are loaded on first use), so the config can use its limits cheaply.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import struct
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate, repeat
from operator import add
from typing import Final

from crc32c import crc32c

__all__ = [
    "COMPRESSION",
    "GZIP_LEVEL",
    "HEADER_SIZE",
    "LINE_ROOM",
    "RECORD_OVERHEAD",
    "available_compressions",
    "batch_size",
    "codec_installed",
    "compression_code",
    "encode_batch",
    "encode_pieces",
    "encode_records",
    "encode_values",
    "record_batch_size",
    "split_batches",
    "split_records",
    "split_values",
    "ts_width",
    "varint",
]

#: Size of the RecordBatch v2 header (baseOffset .. records count).
HEADER_SIZE: Final = 61
#: Upper bound of one record's bytes beyond its value (length, attributes, timestamp and
#: offset deltas, key, value length and header count varints) while a batch stays below
#: 2**31 records.
RECORD_OVERHEAD: Final = 11
#: Room a batch of one record needs beyond the record's value (header plus the widest
#: record overhead), rounded up: a line longer than ``batch_max_bytes - LINE_ROOM`` can
#: never be sent, so ``long_lines`` applies at that length.
LINE_ROOM: Final = 128
#: Compression attribute values of the v2 batch format (attributes bits 0-2).
COMPRESSION: Final[dict[str, int]] = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
#: The Python module each optional codec needs (``pip install 'shipper[zstd]'``...).
CODEC_MODULES: Final[dict[str, str]] = {"snappy": "snappy", "lz4": "lz4", "zstd": "zstandard"}
#: gzip level; 6 is zlib's (and the Java client's) default, 9 (kafka-python's) is ~3x slower.
GZIP_LEVEL: Final = 6

# Cache encodings of lengths below this; longer lines are encoded on the fly, uncached.
_TABLE_LIMIT: Final = 16384
# baseOffset int64 | batchLength int32 | partitionLeaderEpoch int32 | magic int8 | crc uint32
_HEAD: Final = struct.Struct(">qiibI")
# attributes int16 | lastOffsetDelta int32 | baseTimestamp int64 | maxTimestamp int64 |
# producerId int64 | producerEpoch int16 | baseSequence int32 | records count int32
_TAIL: Final = struct.Struct(">hiqqqhii")
# Offset-delta size classes: zigzag varints take 1 byte below 64, 2 below 8192, ...
_CLASS_BOUNDS: Final = (0, 1 << 6, 1 << 13, 1 << 20, 1 << 27, 1 << 31)
# Widest varint of an int64 (a timestampDelta can be any int64).
_VARINT_MAX: Final = 10
# Record-layout tables are indexed by the offset-delta varint size plus the timestampDelta
# varint size minus one (both count the same way in the record length).
_WIDTHS: Final = len(_CLASS_BOUNDS) + _VARINT_MAX - 1


def varint(n: int) -> bytes:
    """Return the zigzag varint encoding of the int64 ``n`` (the record-format integer)."""
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _offset_class(i: int) -> int:
    """Return the byte size of the varint of offset delta ``i`` (1 for 0..63, 2 for 64..8191...)."""
    return len(varint(i))


def ts_width(stamps: Sequence[tuple[int, int]]) -> int:
    """Widest timestampDelta varint any record of ``stamps`` can get, whichever comes first."""
    times = [ts for count, ts in stamps if count]
    return len(varint(max(times) - min(times))) if times else 1


class _Table(dict[int, bytes]):
    """Length -> bytes, computed on a miss and cached only below ``_TABLE_LIMIT``."""

    __slots__ = ("_fn", "_row")

    def __init__(self, fn: Callable[[int], bytes]) -> None:
        super().__init__()
        self._fn = fn
        self._row: list[bytes] = []

    def __missing__(self, n: int) -> bytes:
        v = self._fn(n)
        if n < _TABLE_LIMIT:
            self[n] = v
        return v

    def lookup(self, top: int) -> Callable[[int], bytes]:
        """The fastest way to look up lengths up to ``top``: a list (indexing one beats
        hashing ints above Python's cached small ones, as JSON envelopes' lengths are),
        grown to ``top`` (replaced, never mutated), or the table itself past the cache."""
        if top >= _TABLE_LIMIT:
            return self.__getitem__
        row = self._row
        if len(row) <= top:
            row = self._row = row + list(map(self._fn, range(len(row), top + 1)))
        return row.__getitem__


class _IntTable(dict[int, int]):
    """Length -> size, computed on a miss and cached only below ``_TABLE_LIMIT``."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[int], int]) -> None:
        super().__init__()
        self._fn = fn

    def __missing__(self, n: int) -> int:
        v = self._fn(n)
        if n < _TABLE_LIMIT:
            self[n] = v
        return v


def _lead_piece(s: int, delta_zero: bool, after: bytes = b"") -> Callable[[int], bytes]:
    # [the end of the previous value] + b"\x00" (the previous record's header count) +
    # varint(record length) + attributes 0 (+ timestampDelta 0). The record length of a
    # value of n bytes counts attributes (1), the timestampDelta and offset-delta varints
    # and the key (s in all, plus 1: s is 1 for one-byte deltas and no key), the
    # value-length varint, the value, and the header count (1).
    head = after + b"\x00"
    tail = b"\x00\x00" if delta_zero else b"\x00"

    def fn(n: int) -> bytes:
        return head + varint(4 + s + len(varint(n)) + n) + tail

    return fn


def _size_piece(s: int) -> Callable[[int], int]:
    def fn(n: int) -> int:
        body = 4 + s + len(varint(n)) + n
        return len(varint(body)) + body

    return fn


# One lead table and one size table per record-length offset s (index): the offset-delta
# varint size, plus the timestampDelta varint size - 1 (so 1 for the first 64 records of a
# batch without timestamp deltas). _LEAD has timestampDelta 0 in it, _LEADT not (the delta
# then goes before the offset delta).
_LEAD: Final = [_Table(_lead_piece(s, True)) for s in range(_WIDTHS)]
_LEADT: Final = [_Table(_lead_piece(s, False)) for s in range(_WIDTHS)]
_SIZE: Final = [_IntTable(_size_piece(s)) for s in range(_WIDTHS)]


@functools.lru_cache(maxsize=64)  # a few value ends (JSON's "}") by a few widths
def _lead_after(s: int, delta_zero: bool, after: bytes) -> _Table:
    return _Table(_lead_piece(s, delta_zero, after))


def _lead(s: int, delta_zero: bool, after: bytes = b"") -> _Table:
    """The lead table for record-length offset ``s``, each lead after the end ``after`` of
    the previous value."""
    if not after:
        return _LEAD[s] if delta_zero else _LEADT[s]
    return _lead_after(s, delta_zero, after)


@functools.lru_cache(maxsize=8)  # by delta_zero and a few value ends
def _lead_by_length(delta_zero: bool, after: bytes) -> _Table:
    """Record length -> [end of the previous value + header count 0 +] varint(length) +
    attributes 0 (+ timestampDelta 0): leads by record length, for keyed records, whose
    key lengths vary (a table per key length would not stay small)."""
    head = after + b"\x00"
    tail = b"\x00\x00" if delta_zero else b"\x00"
    return _Table(lambda n: head + varint(n) + tail)


# key length -1 (b"\x01") + varint(value length)
_KEYVLEN: Final = _Table(lambda n: b"\x01" + varint(n))
# value length -> its varint's size plus the value (the value's share of a record length)
_VS: Final = _IntTable(lambda n: len(varint(n)) + n)
# record length -> varint(length) + attributes 0, with and without timestampDelta 0 after it
_VA: Final = _Table(lambda n: varint(n) + b"\x00")
_VA0: Final = _Table(lambda n: varint(n) + b"\x00\x00")
# record length -> bytes the record takes (the length varint, then the record)
_LSZ: Final = _IntTable(lambda n: len(varint(n)) + n)
# varint(offset delta), grown on demand (replaced, never mutated: safe across threads)
_OFFSETS: list[bytes] = [varint(i) for i in range(1 << 13)]


def _offsets(n: int) -> list[bytes]:
    global _OFFSETS  # noqa: PLW0603
    table = _OFFSETS
    if n > len(table):
        table = table + [varint(i) for i in range(len(table), n)]
        _OFFSETS = table
    return table


@functools.lru_cache(maxsize=8)  # with or without the null key, by a few value starts
def _vlen_table(null_key: bool, before: bytes) -> _Table:
    """[key length -1 +] varint(value length) + the start of the value."""
    head = b"\x01" if null_key else b""
    return _Table(lambda n: head + varint(n) + before)


def _key_piece(key: bytes | None) -> bytes:
    return b"\x01" if key is None else varint(len(key)) + key


def _segments(n: int) -> list[tuple[int, int, int]]:
    """Return (start, end, size class) ranges covering record indexes 0..n-1."""
    return _segments_in(0, n)


def _segments_in(a: int, b: int) -> list[tuple[int, int, int]]:
    """Return (start, end, size class) ranges covering record indexes a..b-1."""
    out = []
    for s in range(1, len(_CLASS_BOUNDS)):
        lo, hi = max(a, _CLASS_BOUNDS[s - 1]), min(b, _CLASS_BOUNDS[s])
        if lo < hi:
            out.append((lo, hi, s))
    return out


def codec_installed(name: str) -> bool:
    """True if compression ``name`` can be used here (``none`` and ``gzip`` always can)."""
    module = CODEC_MODULES.get(name)
    return module is None or importlib.util.find_spec(module) is not None


@functools.cache
def _compressor(code: int) -> Callable[[bytes], bytes] | None:
    if code == 0:
        return None
    if code == 1:
        return lambda data: gzip.compress(data, GZIP_LEVEL, mtime=0)
    from shipper.kafka import compat  # noqa: PLC0415  # loads kafka-python only when needed

    codec = compat.codec()
    if code == 2 and codec.has_snappy():
        return codec.snappy_encode  # type: ignore[no-any-return]  # untyped library
    if code == 3 and codec.has_lz4():
        return codec.lz4_encode  # type: ignore[no-any-return]  # untyped library
    if code == 4 and codec.has_zstd():
        return codec.zstd_encode  # type: ignore[no-any-return]  # untyped library
    return None


def available_compressions() -> list[str]:
    """Names of the compression types whose codec is importable here (``none``/``gzip`` always)."""
    return [name for name in COMPRESSION if codec_installed(name)]


def compression_code(name: str) -> int:
    """Return the attribute code for ``name``; ValueError if unknown or its codec is missing."""
    code = COMPRESSION.get(name)
    if code is None:
        raise ValueError(f"unknown compression {name!r}")
    if code and _compressor(code) is None:
        raise ValueError(f"compression {name!r} needs a codec that is not installed")
    return code


def encode_batch(lines: Sequence[bytes], timestamp_ms: int, compression: int = 0) -> bytes:
    """Return one RecordBatch v2 holding ``lines`` as values (no keys, no headers), every
    record with timestamp ``timestamp_ms``: ``encode_values`` with one run of timestamps."""
    return encode_values(lines, ((len(lines), timestamp_ms),), compression)


def encode_values(
    values: Sequence[bytes],
    stamps: Sequence[tuple[int, int]],
    compression: int = 0,
    *,
    key: bytes | None = None,
) -> bytes:
    """Return one RecordBatch v2 of ``values``, all with ``key`` (None: none), no headers.

    ``stamps`` gives the timestamps as runs ``(count, timestamp_ms)`` covering the records
    in order. The batch's base timestamp is the first record's, its max timestamp the
    largest; each record carries its difference to the base as timestampDelta. offsetDelta
    = the record's index; producer id/epoch/sequence are -1 (non-idempotent),
    partitionLeaderEpoch is -1 (the broker sets it). With ``compression`` the records
    section is compressed unless that does not make it smaller, in which case the batch
    goes out uncompressed (as kafka-python does).
    """
    return encode_pieces([values], list(map(len, values)), stamps, compression, key=key)


def encode_pieces(
    columns: Sequence[Sequence[bytes]],
    vlens: Sequence[int],
    stamps: Sequence[tuple[int, int]],
    compression: int = 0,
    *,
    key: bytes | None = None,
    before: bytes = b"",
    after: bytes = b"",
) -> bytes:
    """Return one RecordBatch v2 of ``len(vlens)`` records without headers (as
    ``encode_values``), each value in pieces: ``before + columns[0][i] + columns[1][i] + ...
    + after``, ``vlens[i]`` bytes in all. ``before`` and ``after`` are the same for every
    value: they ride on the table-made pieces around it, so they cost nothing per record.
    """
    n = _check(columns, vlens)
    base, top = _check_stamps(stamps, n)
    if key is not None:
        body = _keyed(columns, vlens, None, stamps, key=key, ends=(before, after))
        return _batch(body, n, base, top, compression)
    step = 3 + len(columns)
    pieces: list[bytes] = [b""] * (step * n + 1)
    longest = max(vlens) if after or before else -1  # envelopes: long values, list lookups
    _leads(pieces, step, vlens, stamps, after, longest)
    kv = _KEYVLEN if not before else _vlen_table(True, before)
    lookup = kv.lookup(longest) if longest >= 0 else kv.__getitem__
    pieces[2 : step * n : step] = map(lookup, vlens)
    for j, column in enumerate(columns):
        pieces[3 + j : step * n : step] = column
    # The first record has no previous value end and header count before it.
    pieces[0] = pieces[0][len(after) + 1 :]
    pieces[-1] = after + b"\x00"  # the last record's value end and header count
    return _batch(b"".join(pieces), n, base, top, compression)


def _leads(  # noqa: PLR0917  # a helper of encode_pieces
    pieces: list[bytes],
    step: int,
    lens: Sequence[int],
    stamps: Sequence[tuple[int, int]],
    after: bytes,
    longest: int,
) -> None:
    """Put each record's lead (the end of the previous value, the previous record's header
    count, the record length, attributes, timestampDelta) at ``pieces[step * i]`` and its
    offset delta after it: records without key and headers, by value length (lists of
    leads up to ``longest`` when it is not -1)."""
    n = len(lens)
    offsets = _offsets(n)
    if len(stamps) == 1 and not after:  # the common case: one chunk, raw
        for a, b, s in _segments(n):
            pieces[step * a : step * b : step] = map(
                _LEAD[s].__getitem__, lens[a:b] if a or b < n else lens
            )
        pieces[1 : step * n : step] = offsets[:n]
        return
    base = stamps[0][1]
    a = 0
    for count, ts in stamps:
        delta = varint(ts - base)
        for x, y, s in _segments_in(a, a + count):
            table = _lead(s + len(delta) - 1, ts == base, after)
            lead = table.lookup(longest) if longest >= 0 else table.__getitem__
            pieces[step * x : step * y : step] = map(lead, lens[x:y])
            if ts == base:
                pieces[step * x + 1 : step * y : step] = offsets[x:y]
            else:
                pieces[step * x + 1 : step * y : step] = map(add, repeat(delta), offsets[x:y])
        a += count


def encode_records(
    columns: Sequence[Sequence[bytes]],
    vlens: Sequence[int],
    hlens: Sequence[int] | int,
    stamps: Sequence[tuple[int, int]],
    compression: int = 0,
    *,
    key: bytes | None = None,
) -> bytes:
    """Return one RecordBatch v2 of ``len(vlens)`` records with headers (and a key).

    Record ``i``'s value and headers are ``columns[0][i] + columns[1][i] + ...``: pieces of
    the value (``vlens[i]`` bytes in all), then its headers section (``hlens[i]`` bytes: the
    header count varint, then each header; ``hlens`` may be one length for all). Every
    record has ``key`` (None: no key). Timestamps, offsets and compression are as in
    ``encode_values``; the bytes are those of kafka-python's builder for the same records.
    """
    n = _check(columns, vlens)
    base, top = _check_stamps(stamps, n)
    body = _keyed(columns, vlens, hlens, stamps, key=key, ends=(b"", b""))
    return _batch(body, n, base, top, compression)


def _keyed(
    columns: Sequence[Sequence[bytes]],
    vlens: Sequence[int],
    hlens: Sequence[int] | int | None,
    stamps: Sequence[tuple[int, int]],
    *,
    key: bytes | None,
    ends: tuple[bytes, bytes],
) -> bytes:
    """The records section of records with a key or headers: leads by record length (from
    tables that stay small whatever the keys), the key as a piece of its own.

    ``hlens`` None: no headers (each lead then carries the previous record's header count
    and the end of its value, ``ends[1]``; ``ends[0]`` starts every value).
    """
    n = len(vlens)
    before, after = ends
    kp = _key_piece(key)
    tails = list(map(_VS.__getitem__, vlens))  # the value's share of each record length
    if isinstance(hlens, int):
        extra = len(kp) + hlens
    elif hlens is None:
        extra = len(kp) + 1
    else:
        tails = list(map(add, tails, hlens))
        extra = len(kp)
    keyed = key is not None
    step = 3 + keyed + len(columns)
    pieces: list[bytes] = [b""] * (step * n + (hlens is None))
    offsets = _offsets(n)
    if hlens is None:
        same, other = _lead_by_length(True, after), _lead_by_length(False, after)
    else:
        same, other = _VA0, _VA
    base = stamps[0][1]
    a = 0
    for count, ts in stamps:
        delta = varint(ts - base)
        table = same if ts == base else other
        for x, y, s in _segments_in(a, a + count):
            # attributes + timestampDelta + offsetDelta + key + value share + headers
            fixed = 1 + len(delta) + s + extra
            lengths = map(add, tails[x:y], repeat(fixed))
            pieces[step * x : step * y : step] = map(table.__getitem__, lengths)
            if ts == base:
                pieces[step * x + 1 : step * y : step] = offsets[x:y]
            else:
                pieces[step * x + 1 : step * y : step] = map(add, repeat(delta), offsets[x:y])
        a += count
    if keyed:
        pieces[2 : step * n : step] = [kp] * n
    kv = _KEYVLEN if not keyed and not before else _vlen_table(not keyed, before)
    pieces[2 + keyed : step * n : step] = map(kv.__getitem__, vlens)
    for j, column in enumerate(columns):
        pieces[3 + keyed + j : step * n : step] = column
    if hlens is None:
        pieces[0] = pieces[0][len(after) + 1 :]
        pieces[-1] = after + b"\x00"
    return b"".join(pieces)


def _check(columns: Sequence[Sequence[bytes]], vlens: Sequence[int]) -> int:
    """The number of records, when there are some and every column has a piece of each."""
    n = len(vlens)
    if not n:
        raise ValueError("a record batch needs at least one record")
    if any(len(column) != n for column in columns):
        raise ValueError(f"columns of {[len(c) for c in columns]} pieces for {n} records")
    return n


def _check_stamps(stamps: Sequence[tuple[int, int]], n: int) -> tuple[int, int]:
    """Return the base (first) and max timestamp of runs that must cover ``n`` records."""
    if sum(count for count, _ in stamps) != n or any(count <= 0 for count, _ in stamps):
        raise ValueError(f"timestamp runs {[c for c, _ in stamps]} do not cover {n} records")
    return stamps[0][1], max(ts for _, ts in stamps)


def _batch(body: bytes, n: int, base: int, top: int, compression: int) -> bytes:
    """Compress (when it helps) and frame a records section as one batch."""
    attributes = 0
    if compression:
        compress = _compressor(compression)
        if compress is None:
            raise ValueError(f"compression {compression} is not available")
        packed = compress(body)
        if len(packed) < len(body):
            body = packed
            attributes = compression
    tail = _TAIL.pack(attributes, n - 1, base, top, -1, -1, -1, n)
    # gil_release_mode=0: at ~20 GB/s a batch takes microseconds, far less than getting
    # the GIL back from the tailer thread would.
    crc = crc32c(body, crc32c(tail, 0, 0), 0)
    head = _HEAD.pack(0, HEADER_SIZE - 12 + len(body), -1, 2, crc)
    return b"".join((head, tail, body))


def batch_size(lines: Sequence[bytes]) -> int:
    """Return the exact uncompressed size in bytes of ``encode_batch(lines, ...)``."""
    return _size_of(list(map(len, lines)))


def _size_of(lens: Sequence[int], extra: int = 0) -> int:
    """Batch size for records of value lengths ``lens`` (exact with ``extra`` 0; with
    ``extra`` bytes more per record for timestamp deltas, an upper bound)."""
    segments = _segments(len(lens))
    return HEADER_SIZE + sum(
        sum(map(_SIZE[s + extra].__getitem__, lens[a:b])) for a, b, s in segments
    )


def record_batch_size(vlen: int, hlen: int = 1, key: bytes | None = None) -> int:
    """Exact uncompressed size of a batch holding one record (value ``vlen`` bytes, headers
    section ``hlen`` bytes, ``key``): what must fit in ``batch_max_bytes``."""
    return HEADER_SIZE + _LSZ[3 + len(_key_piece(key)) + _VS[vlen] + hlen]


def split_batches(
    lines: list[bytes], max_bytes: int, max_lines: int, delta_width: int = 1
) -> list[tuple[list[bytes], int]]:
    """Split ``lines`` into runs whose batch is at most ``max_bytes`` and ``max_lines``.

    Returns ``(lines, raw_bytes)`` pairs in order (the input list itself when it fits).
    ``delta_width`` is the widest timestampDelta varint of the records (``ts_width``). Sizes
    are exact when all fits with ``delta_width`` 1, otherwise bounded by assuming the widest
    varints, so a run may be a few bytes per record under the limit. A line too long to fit
    even alone comes back as a run of its own: check it with ``batch_size`` and drop it.
    """
    lens = list(map(len, lines))
    runs = split_values(lens, max_bytes, max_lines, delta_width)
    if len(runs) == 1:
        return [(lines, sum(lens))]
    raw = list(accumulate(lens))
    return [(lines[a:b], raw[b - 1] - (raw[a - 1] if a else 0)) for a, b in runs]


def split_values(
    vlens: Sequence[int],
    max_bytes: int,
    max_lines: int,
    delta_width: int = 1,
    key: bytes | None = None,
) -> list[tuple[int, int]]:
    """Split records without headers (as for ``encode_values``, of value lengths ``vlens``)
    into ``(start, end)`` index runs whose batch is at most ``max_bytes`` and ``max_lines``,
    bounded like ``split_batches``."""
    n = len(vlens)
    if not n:
        return []
    if key is not None:
        return split_records(vlens, 1, max_bytes, max_lines, key, delta_width)
    extra = delta_width - 1
    if n <= max_lines:
        # Cheap bound first: every record as long as the longest, with the widest varints.
        s, longest = _offset_class(n - 1) + extra, max(vlens)
        body = 4 + s + len(varint(longest)) + longest
        if HEADER_SIZE + sum(vlens) + n * (len(varint(body)) + body - longest) <= max_bytes:
            return [(0, n)]
        if _size_of(vlens, extra) <= max_bytes:  # from the lengths already taken
            return [(0, n)]
    widest = _offset_class(min(n, max_lines) - 1) + extra
    cum = list(accumulate(map(_SIZE[widest].__getitem__, vlens)))
    return _cut(cum, max_bytes - HEADER_SIZE, max_lines)


def split_records(  # noqa: PLR0917  # the record layout has this many parts
    vlens: Sequence[int],
    hlens: Sequence[int] | int,
    max_bytes: int,
    max_lines: int,
    key: bytes | None = None,
    delta_width: int = 1,
) -> list[tuple[int, int]]:
    """Split records (as for ``encode_records``) into ``(start, end)`` index runs whose batch
    is at most ``max_bytes`` and ``max_lines``, bounded like ``split_batches``.

    A record too long to fit even alone comes back as a run of its own: check it with
    ``record_batch_size`` and drop it.
    """
    n = len(vlens)
    if not n:
        return []
    tails = map(_VS.__getitem__, vlens)
    fixed = 1 + delta_width + _offset_class(min(n, max_lines) - 1) + len(_key_piece(key))
    if isinstance(hlens, int):
        fixed += hlens
    else:
        tails = map(add, tails, hlens)
    cum = list(accumulate(map(_LSZ.__getitem__, map(add, tails, repeat(fixed)))))
    return _cut(cum, max_bytes - HEADER_SIZE, max_lines)


def _cut(cum: list[int], room: int, max_lines: int) -> list[tuple[int, int]]:
    """Greedy runs over cumulative record sizes: each at most ``room`` bytes, ``max_lines``."""
    n = len(cum)
    if n <= max_lines and cum[-1] <= room:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    a = 0
    while a < n:
        base = cum[a - 1] if a else 0
        b = min(bisect_right(cum, base + room, a), a + max_lines)
        if b <= a:
            b = a + 1  # too long on its own: let the caller decide
        out.append((a, b))
        a = b
    return out
