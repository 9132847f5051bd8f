"""The Kafka record layout: RecordBatch v2 bytes for whole lists of lines, and every size
overhead of that layout, with per-chunk, not per-line, work.

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
from itertools import accumulate
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
    "split_batches",
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


class _Table(dict[int, bytes]):
    """Length -> bytes, computed on a miss and cached only below ``_TABLE_LIMIT``."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[int], bytes]) -> None:
        super().__init__()
        self._fn = fn

    def __missing__(self, n: int) -> bytes:
        v = self._fn(n)
        if n < _TABLE_LIMIT:
            self[n] = v
        return v


class _SizeTable(dict[int, int]):
    """Value length -> encoded record size, for one offset-delta size class."""

    __slots__ = ("_s",)

    def __init__(self, s: int) -> None:
        super().__init__()
        self._s = s

    def __missing__(self, n: int) -> int:
        body = 4 + self._s + len(varint(n)) + n
        v = len(varint(body)) + body
        if n < _TABLE_LIMIT:
            self[n] = v
        return v


def _lead_piece(s: int) -> Callable[[int], bytes]:
    # b"\x00" (the previous record's header count) + varint(record length)
    # + attributes 0 + timestampDelta 0. The record length counts attributes(1),
    # timestampDelta(1), the offset-delta varint (s), key -1 (1), the value-length
    # varint, the value, and the header count (1).
    def fn(n: int) -> bytes:
        return b"\x00" + varint(4 + s + len(varint(n)) + n) + b"\x00\x00"

    return fn


# One lead table and one size table per offset-delta size class (index = varint size).
_LEAD: Final = [_Table(_lead_piece(s)) for s in range(len(_CLASS_BOUNDS))]
_SIZE: Final = [_SizeTable(s) for s in range(len(_CLASS_BOUNDS))]
# key length -1 (b"\x01") + varint(value length)
_KEYVLEN: Final = _Table(lambda n: b"\x01" + varint(n))
# varint(offset delta), grown on demand (replaced, never mutated: safe across threads)
_OFFSETS: list[bytes] = [varint(i) for i in range(1 << 13)]


def _offsets(n: int) -> list[bytes]:
    global _OFFSETS  # noqa: PLW0603
    table = _OFFSETS
    if n > len(table):
        table = table + [varint(i) for i in range(len(table), n)]
        _OFFSETS = table
    return table


def _segments(n: int) -> list[tuple[int, int, int]]:
    """Return (start, end, size class) ranges covering record indexes 0..n-1."""
    out = []
    for s in range(1, len(_CLASS_BOUNDS)):
        a, b = _CLASS_BOUNDS[s - 1], _CLASS_BOUNDS[s]
        if a >= n:
            break
        out.append((a, min(b, n), s))
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
    """Return one RecordBatch v2 holding ``lines`` as values (no keys, no headers).

    Every record has timestampDelta 0 (the batch's base and max timestamp is
    ``timestamp_ms``), offsetDelta = its index; producer id/epoch/sequence are -1
    (non-idempotent), partitionLeaderEpoch is -1 (the broker sets it). With
    ``compression`` the records section is compressed unless that does not make it
    smaller, in which case the batch goes out uncompressed (as kafka-python does).
    """
    n = len(lines)
    if not n:
        raise ValueError("a record batch needs at least one record")
    lens = list(map(len, lines))
    pieces: list[bytes] = [b""] * (4 * n + 1)
    for a, b, s in _segments(n):
        pieces[4 * a : 4 * b : 4] = map(_LEAD[s].__getitem__, lens[a:b] if a or b < n else lens)
    pieces[1 : 4 * n : 4] = _offsets(n)[:n]
    pieces[2 : 4 * n : 4] = map(_KEYVLEN.__getitem__, lens)
    pieces[3 : 4 * n : 4] = lines
    pieces[0] = pieces[0][1:]  # the first record has no previous header count before it
    pieces[-1] = b"\x00"  # the last record's header count
    body = b"".join(pieces)
    attributes = 0
    if compression:
        compress = _compressor(compression)
        if compress is None:
            raise ValueError(f"compression {compression} is not available")
        packed = compress(body)
        if len(packed) < len(body):
            body = packed
            attributes = compression
    tail = _TAIL.pack(attributes, n - 1, timestamp_ms, timestamp_ms, -1, -1, -1, n)
    # gil_release_mode=0: at ~20 GB/s a batch takes microseconds, far less than getting
    # the GIL back from the tailer thread would.
    crc = crc32c(body, crc32c(tail, 0, 0), 0)
    head = _HEAD.pack(0, HEADER_SIZE - 12 + len(body), -1, 2, crc)
    return b"".join((head, tail, body))


def batch_size(lines: Sequence[bytes]) -> int:
    """Return the exact uncompressed size in bytes of ``encode_batch(lines, ...)``."""
    return _size_of(list(map(len, lines)))


def _size_of(lens: list[int]) -> int:
    """Exact uncompressed batch size for records of value lengths ``lens``."""
    segments = _segments(len(lens))
    return HEADER_SIZE + sum(sum(map(_SIZE[s].__getitem__, lens[a:b])) for a, b, s in segments)


def split_batches(
    lines: list[bytes], max_bytes: int, max_lines: int
) -> list[tuple[list[bytes], int]]:
    """Split ``lines`` into runs whose batch is at most ``max_bytes`` and ``max_lines``.

    Returns ``(lines, raw_bytes)`` pairs in order (the input list itself when it
    fits). Sizes are exact when everything fits, otherwise bounded by assuming the
    widest offset-delta varint, so a run may be a few bytes per record under the
    limit. A line too long to fit even alone comes back as a run of its own: check
    it with ``batch_size`` and drop it.
    """
    n = len(lines)
    if not n:
        return []
    lens = list(map(len, lines))
    total = sum(lens)
    if n <= max_lines:
        # Cheap bound first: every record as long as the longest, with the widest varints.
        s, longest = _offset_class(n - 1), max(lens)
        body = 4 + s + len(varint(longest)) + longest
        if HEADER_SIZE + total + n * (len(varint(body)) + body - longest) <= max_bytes:
            return [(lines, total)]
        if _size_of(lens) <= max_bytes:  # exact, from the lengths already taken
            return [(lines, total)]
    widest = _offset_class(min(n, max_lines) - 1)
    cum = list(accumulate(map(_SIZE[widest].__getitem__, lens)))
    raw = list(accumulate(lens))
    room = max_bytes - HEADER_SIZE
    out: list[tuple[list[bytes], int]] = []
    a = 0
    while a < n:
        base = cum[a - 1] if a else 0
        b = min(bisect_right(cum, base + room, a), a + max_lines)
        if b <= a:
            b = a + 1  # too long on its own: let the caller decide
        out.append((lines[a:b], raw[b - 1] - (raw[a - 1] if a else 0)))
        a = b
    return out
