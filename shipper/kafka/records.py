"""What a record says: turn a take of chunks into Kafka record batches, with the value (the
raw line or a JSON envelope), key, headers and timestamp each chunk's route asks for.

Everything here is per chunk (constant pieces built once) or a C-level map over a chunk's
lines; only lines that need JSON escaping or base64 take a Python step of their own.
"""

from __future__ import annotations

import json
import os
import time
from base64 import b64encode
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterator, Sequence
from itertools import accumulate, chain
from json.encoder import encode_basestring
from operator import add
from typing import TYPE_CHECKING, Final, NamedTuple

from shipper.config import Route
from shipper.kafka.encode import (
    RECORD_OVERHEAD,
    batch_size,
    encode_records,
    encode_values,
    record_batch_size,
    split_batches,
    split_records,
    ts_width,
    varint,
)

if TYPE_CHECKING:
    from shipper.chunk import Chunk, Source
    from shipper.config import KafkaConfig

__all__ = ["HEADER_ORDER", "Encoded", "Records", "partition_hash", "rfc3339"]

#: The headers a record can carry, in the order they are written.
HEADER_ORDER: Final = ("host", "path", "fields", "kubernetes", "offset")

# Bytes that JSON strings must escape: '"', '\\' and the control characters U+0000..U+001F.
# A chunk's lines are scanned at once through this table (0 marks one of them).
_MARK: Final = bytes(0 if b < 0x20 or b in b'"\\' else 1 for b in range(256))
_CACHE_LIMIT: Final = 4096  # partition hashes kept (one per key: host, field or path)


class Encoded(NamedTuple):
    """One batch ready to write, or one record too long for any batch (``payload`` None)."""

    payload: bytes | None
    lines: int
    nbytes: int  # the lines' payload as read (what the ledger counts), not the record bytes
    partition: int | None  # hash of the key: partition = partition % partitions; None: any


def rfc3339(ms: int) -> str:
    """``ms`` since the epoch as RFC 3339 UTC with milliseconds: 2024-05-01T12:00:00.123Z."""
    sec, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{milli:03d}Z"


def partition_hash(key: bytes) -> int:
    """Kafka's default partitioner hash (murmur2, made positive), as the Java client has it:
    a keyed record goes to partition ``partition_hash(key) % partitions``."""
    from shipper.kafka import compat  # noqa: PLC0415  # kafka-python only when keys are used

    return compat.murmur2(key) & 0x7FFFFFFF


def _raw(text: str) -> bytes:
    """A config or environment string as bytes (undecodable bytes from the environment,
    held by Python as surrogate escapes, come back as they were)."""
    return text.encode("utf-8", "surrogateescape")


def _header(name: str, value: bytes) -> bytes:
    key = name.encode()
    return varint(len(key)) + key + varint(len(value)) + value


def _json(value: object) -> bytes:
    """Compact ASCII JSON (non-ASCII escaped: the constant parts are built once per chunk)."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


class _Route:
    """The constant parts of one input's records (format, fields, key, headers)."""

    __slots__ = ("format", "header_parts", "json_tail", "key")

    def __init__(self, route: Route, cfg: KafkaConfig) -> None:
        self.format = route.format
        mode = cfg.key
        self.key: bytes | None = None
        if mode == "host":
            self.key = _raw(cfg.host)
        elif mode.startswith("field:") and mode[6:] in route.fields:
            self.key = _raw(route.fields[mode[6:]])
        # Headers other than path and offset, in HEADER_ORDER: (count, bytes).
        wanted = set(cfg.headers)
        parts: list[bytes] = []
        if "host" in wanted:
            parts.append(_header("host", _raw(cfg.host)))
        parts.append(b"")  # the path header goes here, per chunk
        if "fields" in wanted:
            parts += [_header(f"fields.{k}", _raw(v)) for k, v in route.fields.items()]
        if "kubernetes" in wanted:
            parts += [_header(f"kubernetes.{k}", _raw(v)) for k, v in cfg.kubernetes.items()]
        self.header_parts = parts
        tail = b""
        if route.fields:
            tail += b',"fields":' + _json(route.fields)
        if cfg.kubernetes:
            tail += b',"kubernetes":' + _json(cfg.kubernetes)
        self.json_tail = tail + b"}"


class _Pieces:
    """The records of one group of chunks as ``encode_records`` takes them."""

    __slots__ = ("body", "hlens", "vlens", "width")

    def __init__(self, n: int, width: int) -> None:
        self.width = width
        self.body: list[bytes] = [b""] * (n * width)
        self.vlens: list[int] = [0] * n
        self.hlens: list[int] = [0] * n

    def fill(
        self, a: int, b: int, columns: list[list[bytes]], vlens: list[int], hlens: list[int]
    ) -> None:
        """Set records ``a..b-1``: ``columns[j]`` holds piece ``j`` of each."""
        w = self.width
        for j, column in enumerate(columns):
            self.body[a * w + j : b * w : w] = column
        self.vlens[a:b] = vlens
        self.hlens[a:b] = hlens


class Records:
    """Encodes takes of chunks as record batches, by the route of each chunk's input.

    Built once per sender from the Kafka config and the routes (``cfg.routes``; without
    them every input gets ``kafka.format`` and ``kafka.fields``).
    """

    def __init__(
        self, cfg: KafkaConfig, routes: Sequence[Route] = (), compression: int = 0
    ) -> None:
        self._cfg = cfg
        self._compression = compression
        self._default = _Route(Route(cfg.topic, cfg.format, dict(cfg.fields)), cfg)
        self._routes = [_Route(r, cfg) for r in routes]
        self._headers = frozenset(cfg.headers)
        self._host_json = _json(cfg.host)
        self._by_path = cfg.key == "path"
        self._hashes: dict[bytes, int] = {}
        #: Record bytes per line beyond the line itself, seen in the last take (for sizing
        #: takes so that one fills about one batch).
        self.overhead = RECORD_OVERHEAD
        formats = {r.format for r in (self._default, *self._routes)}
        self.group: Callable[[Source], Hashable] | None = None
        if cfg.key != "none" or len(formats) > 1:
            self.group = self._group

    # -- what goes together ----------------------------------------------------------------
    def key_of(self, source: Source) -> bytes | None:
        """The record key of the lines of ``source`` (None: records without a key)."""
        if self._by_path:
            return os.fsencode(source.path)
        return self._route(source).key

    def _route(self, source: Source) -> _Route:
        i = source.input
        return self._routes[i] if 0 <= i < len(self._routes) else self._default

    def _group(self, source: Source) -> Hashable:
        """Chunks of one group may share a batch: same format, same key."""
        return self._route(source).format, self.key_of(source)

    def _partition(self, key: bytes | None) -> int | None:
        if key is None:
            return None
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) >= _CACHE_LIMIT:
                self._hashes.clear()
            h = self._hashes[key] = partition_hash(key)
        return h

    # -- encoding ----------------------------------------------------------------------------
    def batches(self, chunks: Sequence[Chunk], max_bytes: int, max_lines: int) -> Iterator[Encoded]:
        """Yield the batches of ``chunks`` in order: each at most ``max_bytes`` (uncompressed)
        and ``max_lines``, all records of a batch with one key. A record too long for any
        batch comes alone with ``payload`` None (the caller drops it: ``line_too_long``)."""
        chunks = [c for c in chunks if c.lines]
        group = self.group
        if group is None or len(chunks) == 1:
            runs = [chunks] if chunks else []
        else:
            runs = []
            last: Hashable = object()
            for c in chunks:
                g = group(c.source)
                if not runs or g != last:
                    runs.append([])
                    last = g
                runs[-1].append(c)
        for run in runs:
            yield from self._encode(run, max_bytes, max_lines)

    def _encode(self, chunks: list[Chunk], max_bytes: int, max_lines: int) -> Iterator[Encoded]:
        route = self._route(chunks[0].source)
        key = self.key_of(chunks[0].source)
        partition = self._partition(key)
        stamps = [(len(c.lines), int(c.read_at * 1000)) for c in chunks]
        width = ts_width(stamps)
        plain = route.format == "raw" and not self._headers and key is None
        if plain:
            lines = (
                chunks[0].lines
                if len(chunks) == 1
                else list(chain.from_iterable(c.lines for c in chunks))
            )
            self.overhead = RECORD_OVERHEAD
            a = 0
            for run, raw in split_batches(lines, max_bytes, max_lines, width):
                b = a + len(run)
                if b - a == 1 and batch_size(run) > max_bytes:
                    yield Encoded(None, 1, raw, partition)
                else:
                    payload = encode_values(run, _stamps_of(stamps, a, b), self._compression)
                    yield Encoded(payload, b - a, raw, partition)
                a = b
            return
        lens = list(chain.from_iterable(map(len, c.lines) for c in chunks))
        pieces = self._pieces(chunks, route, lens)
        n = len(lens)
        raw_total = sum(lens)
        self.overhead = RECORD_OVERHEAD + (sum(pieces.vlens) + sum(pieces.hlens) - raw_total) // n
        cum = list(accumulate(lens))
        w = pieces.width
        for a, b in split_records(pieces.vlens, pieces.hlens, max_bytes, max_lines, key, width):
            raw = cum[b - 1] - (cum[a - 1] if a else 0)
            if b - a == 1 and record_batch_size(pieces.vlens[a], pieces.hlens[a], key) > max_bytes:
                yield Encoded(None, 1, raw, partition)
                continue
            payload = encode_records(
                pieces.body[a * w : b * w],
                w,
                pieces.vlens[a:b],
                pieces.hlens[a:b],
                _stamps_of(stamps, a, b),
                key,
                self._compression,
            )
            yield Encoded(payload, b - a, raw, partition)

    def _pieces(self, chunks: list[Chunk], route: _Route, lens: list[int]) -> _Pieces:
        """Values and headers of every record of ``chunks`` (one format), as pieces: per
        chunk, a column of pieces per position (the same piece for every line when it is
        constant), then interleaved, record by record."""
        headers = self._headers
        with_offset = "offset" in headers
        as_json = route.format == "json"
        # Value pieces: raw 1 (the line); json 5 (prefix, message, middle, offset, tail).
        # Header pieces: 1 (a constant section, or 0 headers), 2 (a section ending in the
        # offset header's length, then the offset's digits), or none for json without
        # headers (the header count 0 rides on the envelope's last piece).
        width = (5 if as_json else 1) + (2 if with_offset else 1)
        if as_json and not headers:
            width -= 1
        pieces = _Pieces(len(lens), width)
        a = 0
        for c in chunks:
            b = a + len(c.lines)
            r = self._route(c.source)
            digits = list(map(b"%d".__mod__, c.starts())) if as_json or with_offset else []
            if as_json:
                columns, vlens = self._envelopes(c, r.json_tail, lens[a:b], digits)
                if not headers:
                    columns[-1] = [r.json_tail + b"\x00"] * (b - a)  # + header count 0
            else:
                columns, vlens = [c.lines], lens[a:b]
            if headers:
                section, hlens = self._header_columns(c, r, digits if with_offset else None)
                columns += section
            else:
                if not as_json:
                    columns.append([b"\x00"] * (b - a))
                hlens = [1] * (b - a)
            pieces.fill(a, b, columns, vlens, hlens)
            a = b
        return pieces

    def _header_columns(
        self, c: Chunk, r: _Route, digits: list[bytes] | None
    ) -> tuple[list[list[bytes]], list[int]]:
        """The headers sections of chunk ``c``'s records (``digits``: with the offset)."""
        parts = list(r.header_parts)
        if "path" in self._headers:
            parts[parts.index(b"")] = _header("path", os.fsencode(c.source.path))
        parts = [p for p in parts if p]
        k = len(c.lines)
        if digits is None:
            section = varint(len(parts)) + b"".join(parts)
            return [[section] * k], [len(section)] * k
        # The offset header is last: its value length varint is one byte (at most 20 digits).
        head = varint(len(parts) + 1) + b"".join(parts) + _header("offset", b"")[:-1]
        by_width = {d: head + varint(d) for d in range(1, 21)}
        dlens = list(map(len, digits))
        hlens = list(map((len(head) + 1).__add__, dlens))
        return [list(map(by_width.__getitem__, dlens)), digits], hlens

    def _envelopes(
        self, c: Chunk, tail: bytes, lens: list[int], digits: list[bytes]
    ) -> tuple[list[list[bytes]], list[int]]:
        """The JSON envelopes of chunk ``c``'s lines (``tail`` closes each), as five
        columns, and their lengths."""
        k = len(c.lines)
        head = b'{"@timestamp":"%s","message":"' % rfc3339(int(c.read_at * 1000)).encode()
        middle = b'","host":%s,"path":%s,"offset":' % (self._host_json, _json(c.source.path))
        messages, middles, fixed = _messages(c.lines, middle)
        fixed_len = len(head) + len(middle) + len(tail)
        vlens = list(map(add, map(fixed_len.__add__, lens), map(len, digits)))
        for i in fixed:
            vlens[i] += len(messages[i]) - lens[i] + len(middles[i]) - len(middle)
        return [[head] * k, messages, middles, digits, [tail] * k], vlens


_BASE64_FLAG: Final = b'","message_encoding":"base64'


def _messages(lines: list[bytes], middle: bytes) -> tuple[list[bytes], list[bytes], list[int]]:
    """The JSON string contents of ``lines`` and the piece after each, and the indexes of
    the lines that needed escaping (or base64: not valid UTF-8, flagged in the piece)."""
    k = len(lines)
    blob = b" ".join(lines)  # ASCII space: no multibyte sequence spans two lines
    bad = [] if blob.isascii() else _invalid_utf8(blob, lines)
    marked = blob.translate(_MARK)
    pos = marked.find(0)
    middles = [middle] * k
    if pos < 0 and not bad:
        return lines, middles, []
    ends = list(accumulate(map((1).__add__, map(len, lines))))  # one past each separator
    special = []
    while pos >= 0:
        i = bisect_right(ends, pos)
        special.append(i)
        pos = marked.find(0, ends[i])
    messages = list(lines)
    invalid = set(bad)
    for i in special:
        if i not in invalid:
            messages[i] = encode_basestring(lines[i].decode())[1:-1].encode()
    flagged = _BASE64_FLAG + middle
    for i in bad:
        messages[i] = b64encode(lines[i])
        middles[i] = flagged
    return messages, middles, sorted(invalid.union(special))


def _invalid_utf8(blob: bytes, lines: list[bytes]) -> list[int]:
    """Indexes of the lines that are not valid UTF-8 (``blob`` is them joined by spaces)."""
    try:
        blob.decode()
    except UnicodeDecodeError as e:
        first = e.start
    else:
        return []
    ends = list(accumulate(map((1).__add__, map(len, lines))))
    i = bisect_right(ends, first)
    out = [i]
    for j in range(i + 1, len(lines)):
        line = lines[j]
        if not line.isascii():
            try:
                line.decode()
            except UnicodeDecodeError:
                out.append(j)
    return out


def _stamps_of(stamps: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """The timestamp runs of records ``a..b-1`` of a group whose runs are ``stamps``."""
    if len(stamps) == 1:
        return [(b - a, stamps[0][1])]
    out = []
    lo = 0
    for count, ts in stamps:
        hi = lo + count
        x, y = max(a, lo), min(b, hi)
        if x < y:
            out.append((y - x, ts))
        if hi >= b:
            break
        lo = hi
    return out
