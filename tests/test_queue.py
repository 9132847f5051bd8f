"""The bounded drop queue: never blocks, drops by policy, and keeps the ledger balanced."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.chunk import LINE_OVERHEAD, Chunk, Source
from shipper.config import QueueConfig
from shipper.ledger import Ledger
from shipper.queue import DropQueue
from tests.support.wait import wait_until

SOURCE = Source("/var/log/app.log", 0)


def make(
    max_lines: int = 10,
    max_bytes: int = 1024,
    when_full: str = "drop_newest",
    stall_timeout: float = 5.0,
) -> tuple[DropQueue, Ledger]:
    ledger = Ledger()
    cfg = QueueConfig(
        max_lines=max_lines, max_bytes=max_bytes, when_full=when_full, stall_timeout=stall_timeout
    )
    return DropQueue(cfg, ledger), ledger


def chunk(lines: list[bytes], source: Source = SOURCE, base: int = 0) -> Chunk:
    return Chunk(lines, sum(map(len, lines)), source, 0.0, base)


def put(q: DropQueue, lines: list[bytes]) -> None:
    q.put(chunk(lines))


def take(
    q: DropQueue, max_lines: int, max_bytes: int, timeout: float = 0.0
) -> tuple[list[bytes], int]:
    """The lines and payload bytes of one take(), flattened."""
    got = q.take(max_lines, max_bytes, timeout)
    return [ln for c in got for ln in c.lines], sum(c.nbytes for c in got)


def test_fifo_order_across_chunks() -> None:
    """Lines come out in the order they went in, whatever the chunking."""
    q, led = make(max_lines=100)
    put(q, [b"a", b"b"])
    put(q, [b"c"])
    lines, n = take(q, 100, 1 << 20)
    assert lines == [b"a", b"b", b"c"]
    assert n == 3
    led.sent(3, 3)
    assert led.snapshot().balanced


def test_take_splits_chunks_at_limits() -> None:
    """take() honours max_lines and max_bytes and leaves the rest for the next call."""
    q, led = make(max_lines=100)
    put(q, [b"aaaa", b"bbbb", b"cccc"])
    assert take(q, 2, 1 << 20) == ([b"aaaa", b"bbbb"], 8)
    assert take(q, 10, 3) == ([b"cccc"], 4)  # always at least one line
    led.sent(3, 12)
    assert take(q, 10, 10) == ([], 0)
    assert led.snapshot().balanced


def test_drop_newest_keeps_what_fits_and_counts_the_rest() -> None:
    """drop_newest accepts the head of an overflowing chunk and counts the tail."""
    q, led = make(max_lines=3)
    put(q, [b"1", b"2"])
    put(q, [b"3", b"4", b"5"])
    s = led.snapshot()
    assert s.dropped_lines["queue_full"] == 2
    assert s.queued_lines == 3
    assert take(q, 10, 100)[0] == [b"1", b"2", b"3"]


def test_drop_oldest_evicts_the_head() -> None:
    """drop_oldest evicts the oldest lines to make room for new ones."""
    q, led = make(max_lines=3, when_full="drop_oldest")
    put(q, [b"1", b"2"])
    put(q, [b"3", b"4", b"5"])
    assert led.snapshot().dropped_lines["queue_full"] == 2
    assert take(q, 10, 100)[0] == [b"3", b"4", b"5"]


def test_bytes_bound() -> None:
    """The byte bound is enforced as well as the line bound."""
    q, led = make(max_lines=1000, max_bytes=1024)
    put(q, [b"x" * 600])
    put(q, [b"y" * 600])
    s = led.snapshot()
    assert s.queued_bytes == 600
    assert s.dropped_bytes["queue_full"] == 600


def test_take_times_out_empty_and_wake_releases() -> None:
    """An empty take() returns after its timeout, and wake() releases a waiting one."""
    q, _ = make()
    assert q.take(10, 10, 0.01) == []
    got: list[list[Chunk]] = []
    t = threading.Thread(target=lambda: got.append(q.take(10, 10, 30)))
    t.start()
    q.wake()
    t.join(5)
    assert got == [[]]


def test_drop_all_counts_shutdown() -> None:
    """drop_all() empties the queue and counts every line with the given reason."""
    q, led = make()
    put(q, [b"a", b"b"])
    assert q.drop_all("shutdown") == 2
    s = led.snapshot()
    assert s.dropped_lines["shutdown"] == 2
    assert s.queued_lines == 0
    assert s.balanced


ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.lists(st.binary(max_size=40), min_size=1, max_size=30)),
        st.tuples(st.just("take"), st.integers(1, 25), st.integers(1, 300)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    ops=ops,
    policy=st.sampled_from(["drop_newest", "drop_oldest"]),
    max_lines=st.integers(1, 50),
    max_bytes=st.integers(1024, 2048),
)
def test_ledger_balances_and_order_is_kept(
    ops: list[tuple[object, ...]], policy: str, max_lines: int, max_bytes: int
) -> None:
    """After any sequence of puts and takes: the ledger balances, bounds hold, and what
    comes out is a subsequence of what went in (nothing duplicated, nothing reordered)."""
    q, led = make(max_lines, max_bytes, policy)
    seq = 0
    taken: list[bytes] = []
    for op in ops:
        if op[0] == "put":
            lines = [b"%d:" % (seq + i) + v for i, v in enumerate(op[1])]  # type: ignore[arg-type]
            seq += len(lines)
            put(q, lines)
        else:
            lines, n = take(q, op[1], op[2])  # type: ignore[arg-type]
            taken += lines
            led.sent(len(lines), n)
        s = led.snapshot()
        assert s.balanced
        assert q.lines <= max_lines
        assert q.nbytes + LINE_OVERHEAD * q.lines <= max_bytes
    taken += take(q, 10**9, 10**9)[0]
    ids = [int(x.split(b":", 1)[0]) for x in taken]
    assert ids == sorted(set(ids))


def longest_prefix(lens: list[int], max_lines: int, max_cost: int, per_line: int) -> int:
    """How many of ``lens`` a budget of lines and cost admits, counted one by one."""
    k = total = 0
    while k < min(len(lens), max_lines) and total + lens[k] + per_line <= max_cost:
        total += lens[k] + per_line
        k += 1
    return k


line_lengths = st.lists(
    st.one_of(st.integers(0, 200), st.integers(0, 5000)), min_size=1, max_size=400
)


@settings(max_examples=300, deadline=None)
@given(lens=line_lengths, max_lines=st.integers(1, 500), max_bytes=st.integers(1, 400_000))
def test_take_is_the_longest_prefix_that_fits(
    lens: list[int], max_lines: int, max_bytes: int
) -> None:
    """take() returns exactly the longest prefix within max_lines and max_bytes of payload
    (one line at least), whatever the mix of line lengths."""
    q, _ = make(max_lines=10**6, max_bytes=10**9)
    put(q, [b"x" * n for n in lens])
    got, nbytes = take(q, max_lines, max_bytes)
    want = max(1, longest_prefix(lens, max_lines, max_bytes, 0))
    assert len(got) == want
    assert nbytes == sum(lens[:want]) == sum(map(len, got))


@settings(max_examples=300, deadline=None)
@given(lens=line_lengths, max_lines=st.integers(1, 500), max_bytes=st.integers(1024, 400_000))
def test_offer_admits_the_longest_prefix_that_fits(
    lens: list[int], max_lines: int, max_bytes: int
) -> None:
    """offer() admits exactly the longest prefix whose lines and cost (payload plus the
    per-line bookkeeping) fit, and hands back the rest, starting where it starts."""
    q, led = make(max_lines=max_lines, max_bytes=max_bytes)
    lines = [b"x" * n for n in lens]
    rest = q.offer(chunk(lines, base=1000))
    want = longest_prefix(lens, max_lines, max_bytes, LINE_OVERHEAD)
    assert (q.lines, q.nbytes) == (want, sum(lens[:want]))
    if want == len(lens):
        assert rest is None
    else:
        assert rest is not None
        assert rest.lines == lines[want:]
        assert rest.base == 1000 + sum(lens[:want]) + want
    assert led.snapshot().balanced


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_single_chunk_bigger_than_queue(policy: str) -> None:
    """A chunk larger than the whole queue is cut down, never queued whole."""
    q, led = make(max_lines=5, when_full=policy)
    put(q, [b"%d" % i for i in range(12)])
    s = led.snapshot()
    assert s.queued_lines == 5
    assert s.dropped_lines["queue_full"] == 7
    first = take(q, 100, 1000)[0]
    assert first == (
        [b"%d" % i for i in range(5)]
        if policy == "drop_newest"
        else [b"%d" % i for i in range(7, 12)]
    )


def test_offer_takes_what_fits_and_returns_the_rest() -> None:
    """offer() queues the prefix that fits and hands back the rest, uncounted, starting
    at the file offset of its first line."""
    q, led = make(max_lines=3)
    assert q.offer(chunk([b"a", b"b"])) is None
    rest = q.offer(chunk([b"cc", b"dd", b"ee"], base=100))
    assert rest is not None
    assert rest.lines == [b"dd", b"ee"]
    assert rest.base == 103  # "cc\n" taken
    s = led.snapshot()
    assert s.read_lines == 3
    assert s.dropped_lines["queue_full"] == 0
    assert s.balanced


def test_wait_for_room_returns_when_a_take_frees_room() -> None:
    """A tailer waiting for room wakes as soon as the sender takes lines."""
    q, _ = make(max_lines=2)
    put(q, [b"a", b"b"])
    assert not q.wait_for_room(0.01)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(q.wait_for_room(30)))
    t.start()
    q.take(1, 100, 0)
    t.join(5)
    assert got == [True]


def test_offer_drops_by_policy_once_stalled() -> None:
    """When nothing is delivered for stall_timeout while lines wait, offer() behaves like
    put(): everything is taken in, and the overflow is dropped and counted."""
    q, led = make(max_lines=2, stall_timeout=0.05)
    put(q, [b"a", b"b"])
    wait_until(lambda: q.wait_for_room(0.2), what="the queue to stall")
    assert q.offer(chunk([b"c"])) is None
    assert led.snapshot().dropped_lines["queue_full"] == 1


def test_delivery_keeps_the_queue_from_stalling() -> None:
    """While the sender keeps delivering, a full queue paces reading instead of dropping."""
    q, led = make(max_lines=2, stall_timeout=0.1)
    put(q, [b"a", b"b"])
    end = time.monotonic() + 0.3  # three stall timeouts
    while time.monotonic() < end:
        q.delivered()
        assert q.offer(chunk([b"c"])) is not None
        assert not q.wait_for_room(0.01)
    assert led.snapshot().dropped_lines["queue_full"] == 0


def test_take_never_mixes_groups() -> None:
    """With a group function, one take holds chunks of one group only."""
    q, _ = make(max_lines=100)
    a, b = Source("/a.log", 0), Source("/b.log", 0)
    q.put(chunk([b"a1"], a))
    q.put(chunk([b"a2"], a))
    q.put(chunk([b"b1"], b))
    first = q.take(100, 1000, 0, group=lambda s: s.path)
    assert [ln for c in first for ln in c.lines] == [b"a1", b"a2"]
    assert [ln for c in q.take(100, 1000, 0) for ln in c.lines] == [b"b1"]
