"""The ledger: every transition keeps read == confirmed + unconfirmed + in flight + dropped +
queued, in every snapshot, from any number of threads."""

from __future__ import annotations

import random
import threading

from hypothesis import given
from hypothesis import strategies as st

from shipper.ledger import DROP_REASONS, FENCE_BUCKETS, UNCONFIRMED_REASONS, Ledger

# One step of a line's life: (transition, reason index, lines, bytes per line).
_STEP = st.tuples(
    st.sampled_from(
        ["admitted", "rejected", "dropped", "sent", "confirmed", "unconfirmed", "reclassify"]
    ),
    st.integers(0, 5),
    st.integers(0, 50),
    st.integers(0, 200),
)


def _apply(ledger: Ledger, model: dict[str, int], step: tuple[str, int, int, int]) -> None:
    """Apply ``step`` where the model says the lines exist (never below zero)."""
    name, r, n, width = step
    drop = DROP_REASONS[r % len(DROP_REASONS)]
    why = UNCONFIRMED_REASONS[r % len(UNCONFIRMED_REASONS)]
    if name == "admitted":
        ledger.admitted(n, n * width)
        model["queued"] += n
    elif name == "rejected":
        ledger.rejected(drop, n, n * width)
    elif name == "dropped":
        n = min(n, model["queued"])
        ledger.dropped(drop, n, 0)
        model["queued"] -= n
    elif name == "sent":
        n = min(n, model["queued"])
        ledger.sent(n, 0)
        model["queued"] -= n
        model["in_flight"] += n
        model["sent"] += n
    elif name == "confirmed":
        n = min(n, model["in_flight"])
        ledger.confirmed(n, 0)
        model["in_flight"] -= n
    elif name == "unconfirmed":
        n = min(n, model["in_flight"])
        ledger.unconfirmed(why, n, 0)
        model["in_flight"] -= n
        model["connection_closed"] += n if why == "connection_closed" else 0
    else:
        n = min(n, model["connection_closed"])
        ledger.reclassify("connection_closed", "rejected", n, 0)
        model["connection_closed"] -= n


@given(st.lists(_STEP, max_size=60))
def test_every_sequence_of_transitions_stays_balanced(
    steps: list[tuple[str, int, int, int]],
) -> None:
    """Whatever the order of transitions, each snapshot balances and sent is what was written."""
    ledger = Ledger()
    model = {"queued": 0, "in_flight": 0, "connection_closed": 0, "sent": 0}
    for step in steps:
        _apply(ledger, model, step)
        snap = ledger.snapshot()
        assert snap.balanced, (step, snap)
        assert snap.sent_lines == model["sent"]
        assert snap.queued_lines == model["queued"]
        assert snap.in_flight_lines == model["in_flight"]
        assert (
            snap.sent_lines == snap.confirmed_lines + snap.unconfirmed_total + snap.in_flight_lines
        )


def test_snapshots_balance_while_threads_move_lines() -> None:
    """Snapshots taken while other threads admit, send, confirm and lose lines all balance."""
    ledger = Ledger()
    stop = threading.Event()
    bad: list[object] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            n = rng.randint(1, 100)
            ledger.admitted(n, n * 10)
            ledger.sent(n, n * 10)
            k = rng.randint(0, n)
            ledger.confirmed(k, k * 10)
            ledger.unconfirmed(rng.choice(UNCONFIRMED_REASONS), n - k, (n - k) * 10)

    def reader() -> None:
        for _ in range(2000):
            snap = ledger.snapshot()
            if not snap.balanced:
                bad.append(snap)
        stop.set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not bad
    snap = ledger.snapshot()
    assert snap.read_bytes == (
        snap.confirmed_bytes + sum(snap.unconfirmed_bytes.values()) + snap.in_flight_bytes
    )


def test_shutdown_sweeps_queued_and_in_flight() -> None:
    """The last steps of a shutdown settle what is queued as dropped and what is in flight as
    unconfirmed, both for ``shutdown``, and say how many."""
    ledger = Ledger()
    ledger.admitted(10, 100)
    ledger.sent(6, 60)
    ledger.confirmed(2, 20)
    assert ledger.drop_queued("shutdown") == 4
    assert ledger.unconfirm_in_flight("shutdown") == 4
    snap = ledger.snapshot()
    assert (snap.queued_lines, snap.in_flight_lines) == (0, 0)
    assert snap.dropped_lines["shutdown"] == 4
    assert snap.unconfirmed_lines["shutdown"] == 4
    assert snap.unconfirmed_bytes["shutdown"] == 40
    assert snap.balanced
    log = snap.as_log()
    assert log["lines_confirmed"] == 2
    assert log["lines_unconfirmed"] == 4
    assert log["unconfirmed"] == {"shutdown": 4}
    assert log["dropped"] == {"shutdown": 4}


def test_reclassify_moves_lines_between_reasons_only() -> None:
    """Turning connection_closed lines into rejected ones changes no total."""
    ledger = Ledger()
    ledger.admitted(5, 50)
    ledger.sent(5, 50)
    ledger.unconfirmed("connection_closed", 5, 50)
    ledger.reclassify("connection_closed", "rejected", 3, 30)
    snap = ledger.snapshot()
    assert snap.unconfirmed_lines["connection_closed"] == 2
    assert snap.unconfirmed_lines["rejected"] == 3
    assert snap.unconfirmed_bytes["rejected"] == 30
    assert snap.unconfirmed_total == 5
    assert snap.balanced


def test_fence_round_trips_fill_le_buckets() -> None:
    """A round trip is counted in the first bucket whose bound is at least its value."""
    ledger = Ledger()
    for seconds in (0.0004, 0.0005, 0.003, 0.003, 99.0):
        ledger.fence_answered(seconds)
    h = ledger.snapshot().fence_rtt
    assert h.count == 5
    assert h.buckets[0] == 2  # 0.0004 and 0.0005 (le 0.0005)
    assert h.buckets[FENCE_BUCKETS.index(0.005)] == 2
    assert h.buckets[-1] == 1  # +Inf
    assert h.quantile(0.5) == 0.005
    assert h.quantile(0.99) == float("inf")
    assert Ledger().snapshot().fence_rtt.quantile(0.5) is None


def test_gauges_with_a_prefix_are_forgotten_together() -> None:
    """clear_gauges drops every gauge of a family (brokers that went away) and no other."""
    ledger = Ledger()
    ledger.set_gauge("kafka_in_flight_bytes:1", 5)
    ledger.set_gauge("kafka_in_flight_bytes:2", 7)
    ledger.set_gauge("files_watched", 3)
    ledger.clear_gauges("kafka_in_flight_bytes:")
    assert ledger.snapshot().gauges == {"files_watched": 3}
