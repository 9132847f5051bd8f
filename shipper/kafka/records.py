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
from itertools import accumulate, chain, compress, count, repeat
from json.encoder import encode_basestring
from operator import add, not_
from typing import TYPE_CHECKING, Final, NamedTuple

from shipper.config import Route
from shipper.kafka.encode import (
    RECORD_OVERHEAD,
    encode_pieces,
    encode_records,
    record_batch_size,
    split_records,
    split_values,
    ts_width,
    varint,
)

if TYPE_CHECKING:
    from shipper.chunk import Chunk, Source
    from shipper.config import KafkaConfig

__all__ = ["Encoded", "Records", "partition_hash", "rfc3339"]

# Bytes that JSON strings must escape: '"', '\\' and the control characters U+0000..U+001F.
_SPECIAL: Final = tuple(bytes([b]) for b in (0x22, 0x5C, *range(0x20)))
_CONTROLS: Final = bytes(range(0x20))
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

    __slots__ = ("format", "header_parts", "json_extra", "key")

    def __init__(self, route: Route, cfg: KafkaConfig) -> None:
        self.format = route.format
        mode = cfg.key
        self.key: bytes | None = None
        if mode == "host":
            self.key = _raw(cfg.host)
        elif mode.startswith("field:") and mode[6:] in route.fields:
            self.key = _raw(route.fields[mode[6:]])
        # The headers but path and offset, encoded, in the order they are written: host,
        # path (b"" holds its place: it is per chunk), fields.*, kubernetes.* (offset last).
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
        extra = b""
        if route.fields:
            extra += b',"fields":' + _json(route.fields)
        if cfg.kubernetes:
            extra += b',"kubernetes":' + _json(cfg.kubernetes)
        self.json_extra = extra


class _Pieces:
    """The records of one group of chunks as ``encode_pieces``/``encode_records`` take them:
    columns of pieces (column ``j`` holds piece ``j`` of every record), and lengths."""

    __slots__ = ("columns", "hlens", "vlens")

    def __init__(self, width: int) -> None:
        self.columns: list[list[bytes]] = [[] for _ in range(width)]
        self.vlens: list[int] = []
        self.hlens: list[int] = []

    def add(self, columns: list[list[bytes]], vlens: list[int], hlens: list[int]) -> None:
        """Append the records of one chunk: ``columns[j]`` holds piece ``j`` of each;
        ``hlens`` their headers sections' lengths (empty: no headers)."""
        for mine, column in zip(self.columns, columns, strict=True):
            mine.extend(column)
        self.vlens += vlens
        self.hlens += hlens


class Records:
    """Encodes takes of chunks as record batches, by the route of each chunk's input.

    Built once per sender from the Kafka config and the routes (``cfg.routes``; without
    them every input gets ``kafka.format`` and ``kafka.fields``).
    """

    def __init__(
        self, cfg: KafkaConfig, routes: Sequence[Route] = (), compression: int = 0
    ) -> None:
        self._compression = compression
        self._default = _Route(Route(cfg.topic, cfg.format, dict(cfg.fields)), cfg)
        self._routes = [_Route(r, cfg) for r in routes]
        self._headers = frozenset(cfg.headers)
        self._host_json = _json(cfg.host)
        self._by_path = cfg.key == "path"
        self._hashes: dict[bytes, int] = {}
        #: Record bytes per line beyond the line itself, seen in the last take, with a margin
        #: (for sizing takes so that one fills about one batch, and not more).
        self.overhead = RECORD_OVERHEAD
        used = self._routes or [self._default]
        formats = {r.format for r in used}
        keys = {r.key for r in used}
        #: What the queue's take groups chunks by (one format and one key per take), or
        #: None when every record is alike.
        self.group: Callable[[Source], Hashable] | None = None
        if self._by_path or len(formats) > 1 or len(keys) > 1:
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
        """The batches of chunks of one group (one format, one key)."""
        route = self._route(chunks[0].source)
        key = self.key_of(chunks[0].source)
        partition = self._partition(key)
        stamps = [(len(c.lines), int(c.read_at * 1000)) for c in chunks]
        delta = ts_width(stamps)
        lines = chunks[0].lines
        if len(chunks) > 1:
            lines = list(chain.from_iterable(c.lines for c in chunks))
        lens = list(map(len, lines))
        n = len(lens)
        raw_total = sum(lens)
        headers = bool(self._headers)
        as_json = route.format == "json"
        if headers or as_json:
            pieces = self._pieces(chunks, route, lens)
            columns, vlens, hlens = pieces.columns, pieces.vlens, pieces.hlens
            record_bytes = sum(vlens) + (sum(hlens) - n if headers else 0)
        else:  # raw lines without headers: the lines are the values
            columns, vlens, hlens = [lines], lens, []
            record_bytes = raw_total
        # With a margin of an eighth: the next take's lines may be shorter on average (more
        # envelopes per raw byte), and a take a little over one batch makes two batches.
        self.overhead = RECORD_OVERHEAD + (record_bytes - raw_total) // n * 9 // 8
        if headers:
            runs = split_records(vlens, hlens, max_bytes, max_lines, key, delta)
        else:
            runs = split_values(vlens, max_bytes, max_lines, delta, key)
        cum = list(accumulate(lens)) if len(runs) > 1 else []
        for a, b in runs:
            raw = cum[b - 1] - (cum[a - 1] if a else 0) if cum else raw_total
            if (
                b - a == 1
                and record_batch_size(vlens[a], hlens[a] if headers else 1, key) > max_bytes
            ):
                yield Encoded(None, 1, raw, partition)
                continue
            run = _stamps_of(stamps, a, b)
            whole = a == 0 and b == n
            mine = columns if whole else [column[a:b] for column in columns]
            sizes = vlens if whole else vlens[a:b]
            if headers:
                payload = encode_records(mine, sizes, hlens[a:b], run, self._compression, key=key)
            else:
                payload = encode_pieces(
                    mine,
                    sizes,
                    run,
                    self._compression,
                    key=key,
                    before=_JSON_START if as_json else b"",
                    after=_JSON_END if as_json else b"",
                )
            yield Encoded(payload, b - a, raw, partition)

    def _pieces(self, chunks: list[Chunk], route: _Route, lens: list[int]) -> _Pieces:
        """Values (and headers) of every record of ``chunks`` (one format), as pieces: per
        chunk, a column of pieces per position (the same piece for every line when it is
        constant), appended to the group's."""
        headers = self._headers
        with_offset = "offset" in headers
        as_json = route.format == "json"
        # Value pieces: raw 1 (the line); json 3 (the message; the fields after it; the
        # offset), and 2 more (the envelope's start and end) with headers (without,
        # encode_pieces adds them).
        # Header pieces: none without headers; else 1 (a constant section) or 2 (a section
        # ending in the offset header's value length, then the offset's digits).
        vw = (5 if headers else 3) if as_json else 1
        pieces = _Pieces(vw + ((2 if with_offset else 1) if headers else 0))
        a = 0
        for c in chunks:
            b = a + len(c.lines)
            r = self._route(c.source)
            starts = _starts(c, lens[a:b]) if as_json or with_offset else []
            if as_json:
                columns, vlens = self._envelopes(c, r, lens[a:b], starts)
                if headers:
                    k = b - a
                    columns = [[_JSON_START] * k, *columns, [_JSON_END] * k]
            else:
                columns, vlens = [c.lines], lens[a:b]
            hlens: list[int] = []
            if headers:
                digits = _decimal(starts) if with_offset else None
                section, hlens = self._header_columns(c, r, digits)
                columns += section
            pieces.add(columns, vlens, hlens)
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
        hlens = list(map(add, dlens, repeat(len(head) + 1)))
        return [list(map(by_width.__getitem__, dlens)), digits], hlens

    def _envelopes(
        self, c: Chunk, r: _Route, lens: list[int], starts: Sequence[int]
    ) -> tuple[list[list[bytes]], list[int]]:
        """The JSON envelopes of chunk ``c``'s lines (starting in the file at ``starts``) as
        three columns (message; the fields after it; the offset) to go between
        ``_JSON_START`` and ``_JSON_END``, and their whole lengths."""
        middle = b'","@timestamp":"%s","host":%s,"path":%s%s,"offset":' % (
            rfc3339(int(c.read_at * 1000)).encode(),
            self._host_json,
            _json(c.source.path),
            r.json_extra,
        )
        messages, bad, fixed = _messages(c, starts)
        digits = _decimal(starts)
        lo, hi = (starts[0], starts[-1]) if c.offsets is None else (min(starts), max(starts))
        width = len(b"%d" % hi)
        fixed_len = len(_JSON_START) + len(middle) + len(_JSON_END)
        if len(b"%d" % lo) == width:  # every offset as wide: one length more for all
            vlens = list(map(add, lens, repeat(fixed_len + width)))
        else:
            vlens = list(map(add, map(add, lens, repeat(fixed_len)), map(len, digits)))
        for i in fixed:
            vlens[i] += len(messages[i]) - lens[i]
        middles = [middle] * len(lens)
        if bad:  # base64 messages: flagged after the message
            flagged = _BASE64_FLAG + middle
            for i in bad:
                middles[i] = flagged
                vlens[i] += len(_BASE64_FLAG)
        return [messages, middles, digits], vlens


#: Where every JSON envelope starts and ends; the message comes first, the offset last.
_JSON_START: Final = b'{"message":"'
_JSON_END: Final = b"}"
_BASE64_FLAG: Final = b'","message_encoding":"base64'


def _messages(c: Chunk, starts: Sequence[int]) -> tuple[list[bytes], list[int], list[int]]:
    """The JSON string contents of chunk ``c``'s lines, the indexes of the lines in base64
    (not valid UTF-8), and of all the lines whose contents are not the line (escaped, or
    base64). ``starts``: the lines' file offsets (when the lines are regular, the blob
    below has each line where the file has it, shifted by the chunk's base)."""
    lines = c.lines
    k = len(lines)
    if c.offsets is None and c.eol:
        shift, sep = c.base, c.eol
    else:
        starts = list(accumulate(map(add, map(len, lines[:-1]), repeat(1)), initial=0))
        shift, sep = 0, 1
    # Scanned at once, separated by spaces: a line is never special for its separators,
    # and no multibyte sequence spans two lines.
    blob = (b" " * sep).join(lines)
    bad = [] if blob.isascii() else _invalid_utf8(blob, lines)
    special: set[int] = set()
    find = blob.find
    for char in _SPECIAL:  # one memchr pass per byte: cheaper than a per-byte table
        pos = find(char)
        while pos >= 0:  # once per line that has it
            i = bisect_right(starts, pos + shift) - 1
            special.add(i)
            pos = find(char, starts[i + 1] - shift) if i + 1 < k else -1
    if not special and not bad:
        return lines, [], []
    messages = list(lines)
    invalid = set(bad)
    for i in special:
        if i not in invalid:
            messages[i] = _escape(lines[i])
    for i in bad:
        messages[i] = b64encode(lines[i])
    return messages, bad, sorted(invalid.union(special))


def _escape(line: bytes) -> bytes:
    """The JSON string contents of a UTF-8 line with quotes, backslashes or controls."""
    if len(line.translate(None, _CONTROLS)) == len(line):  # quotes and backslashes only
        return line.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return encode_basestring(line.decode())[1:-1].encode()


def _invalid_utf8(blob: bytes, lines: list[bytes]) -> list[int]:
    """Indexes of the lines that are not valid UTF-8 (``blob``: them joined by spaces, so a
    multibyte sequence never spans two lines)."""
    try:
        blob.decode()
    except UnicodeDecodeError:
        pass
    else:
        return []
    out = []
    for i in compress(count(), map(not_, map(bytes.isascii, lines))):
        try:
            lines[i].decode()
        except UnicodeDecodeError:
            out.append(i)
    return out


def _starts(c: Chunk, lens: list[int]) -> Sequence[int]:
    """Each line's file offset."""
    if c.offsets is not None:
        return c.offsets
    return tuple(accumulate(map(add, lens[:-1], repeat(c.eol)), initial=c.base))


def _decimal(numbers: Sequence[int]) -> list[bytes]:
    """Each number in decimal ASCII, by one %-format for them all (no Python call per
    number)."""
    text = (b"%d," * (len(numbers) - 1) + b"%d") % tuple(numbers)
    return text.split(b",")


def _stamps_of(stamps: list[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """The timestamp runs of records ``a..b-1`` of a group whose runs are ``stamps``."""
    if len(stamps) == 1:
        return [(b - a, stamps[0][1])]
    out = []
    lo = 0
    for n, ts in stamps:
        hi = lo + n
        x, y = max(a, lo), min(b, hi)
        if x < y:
            out.append((y - x, ts))
        if hi >= b:
            break
        lo = hi
    return out
