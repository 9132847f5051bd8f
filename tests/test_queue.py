"""The bounded drop queue: never blocks, drops by policy, and keeps the ledger balanced."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.config import QueueConfig
from shipper.ledger import Ledger
from shipper.queue import LINE_OVERHEAD, DropQueue


def make(max_lines: int = 10, max_bytes: int = 1024, when_full: str = "drop_newest"
         ) -> tuple[DropQueue, Ledger]:
    ledger = Ledger()
    cfg = QueueConfig(max_lines=max_lines, max_bytes=max_bytes, when_full=when_full)
    return DropQueue(cfg, ledger), ledger


def put(q: DropQueue, lines: list[bytes]) -> None:
    q.put(lines, sum(map(len, lines)))


def test_fifo_order_across_chunks() -> None:
    """Lines come out in the order they went in, whatever the chunking."""
    q, led = make(max_lines=100)
    put(q, [b"a", b"b"])
    put(q, [b"c"])
    lines, n = q.take(100, 1 << 20, 0)
    assert lines == [b"a", b"b", b"c"]
    assert n == 3
    led.sent(3, 3)
    assert led.snapshot().balanced


def test_take_splits_chunks_at_limits() -> None:
    """take() honours max_lines and max_bytes and leaves the rest for the next call."""
    q, led = make(max_lines=100)
    put(q, [b"aaaa", b"bbbb", b"cccc"])
    assert q.take(2, 1 << 20, 0) == ([b"aaaa", b"bbbb"], 8)
    assert q.take(10, 3, 0) == ([b"cccc"], 4)  # always at least one line
    led.sent(3, 12)
    assert q.take(10, 10, 0) == ([], 0)
    assert led.snapshot().balanced


def test_drop_newest_keeps_what_fits_and_counts_the_rest() -> None:
    """drop_newest accepts the head of an overflowing chunk and counts the tail."""
    q, led = make(max_lines=3)
    put(q, [b"1", b"2"])
    put(q, [b"3", b"4", b"5"])
    s = led.snapshot()
    assert s.dropped_lines["queue_full"] == 2
    assert s.queued_lines == 3
    assert q.take(10, 100, 0)[0] == [b"1", b"2", b"3"]


def test_drop_oldest_evicts_the_head() -> None:
    """drop_oldest evicts the oldest lines to make room for new ones."""
    q, led = make(max_lines=3, when_full="drop_oldest")
    put(q, [b"1", b"2"])
    put(q, [b"3", b"4", b"5"])
    assert led.snapshot().dropped_lines["queue_full"] == 2
    assert q.take(10, 100, 0)[0] == [b"3", b"4", b"5"]


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
    assert q.take(10, 10, 0.01) == ([], 0)
    got: list[tuple[list[bytes], int]] = []
    t = threading.Thread(target=lambda: got.append(q.take(10, 10, 30)))
    t.start()
    q.wake()
    t.join(5)
    assert got == [([], 0)]


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
@given(ops=ops, policy=st.sampled_from(["drop_newest", "drop_oldest"]),
       max_lines=st.integers(1, 50), max_bytes=st.integers(1024, 2048))
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
            lines, n = q.take(op[1], op[2], 0)  # type: ignore[arg-type]
            taken += lines
            led.sent(len(lines), n)
        s = led.snapshot()
        assert s.balanced
        assert q.lines <= max_lines
        assert q.nbytes + LINE_OVERHEAD * q.lines <= max_bytes
    taken += q.take(10**9, 10**9, 0)[0]
    ids = [int(x.split(b":", 1)[0]) for x in taken]
    assert ids == sorted(set(ids))


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_single_chunk_bigger_than_queue(policy: str) -> None:
    """A chunk larger than the whole queue is cut down, never queued whole."""
    q, led = make(max_lines=5, when_full=policy)
    put(q, [b"%d" % i for i in range(12)])
    s = led.snapshot()
    assert s.queued_lines == 5
    assert s.dropped_lines["queue_full"] == 7
    first = q.take(100, 1000, 0)[0]
    assert first == ([b"%d" % i for i in range(5)] if policy == "drop_newest"
                     else [b"%d" % i for i in range(7, 12)])


def test_room_paces_reads_while_the_sender_delivers() -> None:
    """room() limits reads to what fits while lines are being handed to Kafka."""
    q, led = make(max_lines=10, max_bytes=10_000)
    assert q.room() > 0
    put(q, [b"x" * 99] * 10)
    assert q.room() == 0  # full, and the sender delivered recently: wait, don't drop
    lines, n = q.take(5, 10_000, 0)
    led.sent(len(lines), n)
    assert 0 < q.room() <= 5 * 100


def test_room_stops_limiting_when_kafka_stalls() -> None:
    """When nothing was sent for stall_timeout while lines wait, reading is no longer held
    back, so overflow is dropped (and counted) instead of lagging without bound."""
    ledger = Ledger()
    q = DropQueue(QueueConfig(max_lines=2, stall_timeout=0.0), ledger)
    put(q, [b"a", b"b"])
    time.sleep(0.01)
    assert q.room() > 1 << 40


def test_offer_takes_what_fits_and_drops_nothing() -> None:
    """offer() queues the prefix that fits and leaves the rest to the caller, uncounted."""
    q, led = make(max_lines=3)
    assert q.offer([b"a", b"b"], 2) == 2
    assert q.offer([b"c", b"d", b"e"], 3) == 1
    s = led.snapshot()
    assert s.read_lines == 3
    assert s.dropped_lines["queue_full"] == 0
    assert s.balanced


def test_offer_drops_by_policy_once_stalled() -> None:
    """When the queue stalls, offer() behaves like put(): all taken, overflow dropped."""
    ledger = Ledger()
    q = DropQueue(QueueConfig(max_lines=2, stall_timeout=0.0), ledger)
    put(q, [b"a", b"b"])
    time.sleep(0.01)
    assert q.offer([b"c"], 1) == 1
    assert ledger.snapshot().dropped_lines["queue_full"] == 1
