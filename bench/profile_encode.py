"""Measure encode speed, and optionally push lines end to end through KafkaSender to a broker.

python bench/profile_encode.py                       # encoder only: lines/s per codec
python bench/profile_encode.py --kafka HOST:PORT     # + 1M lines through the sender,
                                                     #   read back and checked byte-exact
"""

from __future__ import annotations

import argparse
import cProfile
import random
import resource
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer

from shipper.chunk import Chunk, Source
from shipper.config import KafkaConfig, QueueConfig, build
from shipper.kafka.encode import (
    available_compressions,
    compression_code,
    encode_batch,
    split_batches,
)
from shipper.kafka.sender import KafkaSender
from shipper.ledger import Ledger
from shipper.log import configure, get_logger
from shipper.queue import DropQueue

__all__: list[str] = []


def make_lines(n: int, size: int, seed: int = 1) -> list[bytes]:
    """``n`` distinct log-like lines of about ``size`` bytes, each starting with its index."""
    rnd = random.Random(seed)
    words = [
        bytes(rnd.choices(b"abcdefghijklmnopqrstuvwxyz", k=rnd.randrange(2, 9))) for _ in range(500)
    ]
    out = []
    for i in range(n):
        body = b" ".join(rnd.choices(words, k=size // 5))[: size - 10]
        out.append(b"%09d " % i + body)
    return out


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench_encode(lines: list[bytes], batch_bytes: int, batch_lines: int) -> None:
    """Print lines/s for split + encode per compression type, over the whole list."""
    for name in available_compressions():
        code = compression_code(name)
        total = lines if code == 0 else lines[: len(lines) // 5]
        t0, c0 = time.perf_counter(), cpu()
        out = 0
        step = 6000
        for i in range(0, len(total), step):
            for run, _ in split_batches(total[i : i + step], batch_bytes, batch_lines):
                out += len(encode_batch(run, 1_700_000_000_000, code))
        dt, dc = time.perf_counter() - t0, cpu() - c0
        print(
            f"encode {name:6s} {len(total):>9,d} lines  {len(total) / dt:>12,.0f} lines/s  "
            f"{len(total) / dc:>12,.0f} lines/cpu-s  {out / len(total):6.1f} B/line on the wire"
        )


def bench_kafka(bootstrap: str, lines: list[bytes], compression: str, **kafka: Any) -> bool:
    """Send ``lines`` through KafkaSender (real Ledger/DropQueue), read back, check, report."""
    configure("warning", "console")
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ledger = Ledger()
    queue = DropQueue(QueueConfig(max_lines=2_000_000, max_bytes=1 << 30), ledger)
    cfg = build(
        KafkaConfig, bootstrap_servers=[bootstrap], topic=topic, compression=compression, **kafka
    )
    sender = KafkaSender(cfg, (), queue, ledger, get_logger())
    t = time.monotonic()
    sender.start()
    print(f"start() returned in {1000 * (time.monotonic() - t):.1f} ms")
    while not sender.connected:
        time.sleep(0.01)
    print(f"connected after {time.monotonic() - t:.2f} s")
    # Feed the queue as a tailer would: chunks of 1000 lines, from another thread.
    chunks = [
        (lines[i : i + 1000], sum(map(len, lines[i : i + 1000])))
        for i in range(0, len(lines), 1000)
    ]

    source = Source("/bench.log", 0)

    def feed() -> None:
        for chunk, nbytes in chunks:
            queue.put(Chunk(chunk, nbytes, source, 0.0))

    t0, c0 = time.monotonic(), cpu()
    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join()
    while ledger.snapshot().confirmed_lines < len(lines):
        time.sleep(0.0005)
    dt, dc = time.monotonic() - t0, cpu() - c0
    sender.stop(time.monotonic() + 10)
    df, dfc = time.monotonic() - t0, cpu() - c0
    snap = ledger.snapshot()
    n = len(lines)
    print(
        f"sender {compression:6s} {n:,d} lines confirmed in {dt:.2f} s: {n / dt:,.0f} lines/s, "
        f"process CPU {dc:.2f} s ({100 * dc / dt:.0f}% of a core); incl. flush+close "
        f"{df:.2f} s: {n / df:,.0f} lines/s, {n / dfc:,.0f} lines/cpu-s"
    )
    print("ledger:", snap.as_log())
    rtt = snap.fence_rtt
    print(
        f"fences {snap.events.get('kafka_fences', 0):,d}: round trip p50 <= "
        f"{rtt.quantile(0.5)} s, p99 <= {rtt.quantile(0.99)} s"
    )

    t1 = time.monotonic()
    consumer: Any = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    seen = bytearray(len(lines))
    bad = dupes = 0
    for msg in consumer:
        i = int(msg.value[:9])
        if msg.value != lines[i]:
            bad += 1
        elif seen[i]:
            dupes += 1
        seen[i] = 1
        if msg.offset + 1 >= len(lines):
            break
    consumer.close()
    missing = len(lines) - sum(seen)
    print(
        f"read back in {time.monotonic() - t1:.1f} s: missing={missing} duplicates={dupes} "
        f"corrupt={bad}"
    )
    return missing == dupes == bad == 0 and snap.sent_lines == len(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=140, help="bytes per line")
    ap.add_argument("--batch-bytes", type=int, default=1000 * 1024)
    ap.add_argument("--batch-lines", type=int, default=20_000)
    ap.add_argument("--kafka", metavar="HOST:PORT", help="also run end to end against this broker")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--fence-bytes", default="1MiB", help="kafka.fence_bytes")
    ap.add_argument("--fence-interval", default="100ms", help="kafka.fence_interval")
    ap.add_argument("--max-in-flight", default="1MiB", help="kafka.max_in_flight_bytes")
    ap.add_argument("--profile", action="store_true", help="cProfile the plain encode")
    args = ap.parse_args()
    lines = make_lines(args.lines, args.size)
    if args.profile:
        cProfile.runctx(
            "for i in range(0, len(lines), 6000): encode_batch(lines[i:i+6000], 0)",
            globals(),
            {"lines": lines, "encode_batch": encode_batch},
            sort="tottime",
        )
    bench_encode(lines, args.batch_bytes, args.batch_lines)
    if args.kafka:
        ok = bench_kafka(
            args.kafka,
            lines,
            args.compression,
            fence_bytes=args.fence_bytes,
            fence_interval=args.fence_interval,
            max_in_flight_bytes=args.max_in_flight,
        )
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
