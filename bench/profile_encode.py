"""Measure record encoding (lines/s per record format), and optionally push lines end to end
through KafkaSender to a broker.

python bench/profile_encode.py                        # encode: raw, raw+headers, raw+key, json...
python bench/profile_encode.py --modes raw,json --lines 200000
python bench/profile_encode.py --profile json         # cProfile one mode's encoding
python bench/profile_encode.py --kafka HOST:PORT [--format json]
                                                      # + the lines through the sender,
                                                      #   read back and checked

The lines are the benchmark's own (``benchkit.gen``, the file ``make bench`` ships), cut into
chunks as the tailer reads them (1 MiB reads) and taken about one batch at a time as the
sender takes them. Figures are CPU seconds of this process (the machine may be shared).
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import resource
import sys
import threading
import time
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from itertools import accumulate
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit.gen import generate
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient

from shipper.chunk import Chunk, Source
from shipper.config import KafkaConfig, QueueConfig, Route, build
from shipper.kafka.encode import HEADER_SIZE, compression_code
from shipper.kafka.records import Records
from shipper.kafka.sender import KafkaSender
from shipper.ledger import Ledger
from shipper.log import configure, get_logger
from shipper.queue import DropQueue

__all__: list[str] = []

PATH = "/var/log/app/app.log"
READ = 1 << 20  # the tailer's read size
#: Record formats measured: kafka config keys of each.
MODES: dict[str, dict[str, Any]] = {
    "raw": {},
    "raw+headers": {"headers": ["host", "path", "offset"]},
    "raw+key": {"key": "path"},
    "json": {"format": "json"},
    "json+key": {"format": "json", "key": "path"},
}


def cpu() -> float:
    """CPU seconds of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_chunks(n: int) -> list[Chunk]:
    """``n`` benchmark lines in chunks of whole lines, as 1 MiB reads of the file cut them."""
    data = b"".join(generate(n))
    out = []
    at = 0
    t = 1_714_567_890.0
    while at < len(data):
        end = data.rfind(b"\n", at, at + READ) + 1 or len(data)
        lines = data[at : end - 1].split(b"\n")
        out.append(Chunk(lines, end - at - len(lines), Source(PATH, 0), t, at, 1))
        at = end
        t += 0.004
    return out


def takes(
    chunks: list[Chunk], records: Records, batch_bytes: int, batch_lines: int
) -> Iterator[list[Chunk]]:
    """Takes as the sender makes them: about one batch of record bytes each."""
    pending = deque(chunks)
    room = batch_bytes - HEADER_SIZE
    budget = room
    while pending:
        out: list[Chunk] = []
        n = nbytes = 0
        while pending and n < batch_lines and nbytes < budget:
            c = pending[0]
            if n + len(c) <= batch_lines and nbytes + c.nbytes <= budget:
                out.append(pending.popleft())
                n, nbytes = n + len(c), nbytes + c.nbytes
                continue
            fits = bisect_right(list(accumulate(map(len, c.lines))), budget - nbytes)
            k = max(min(fits, batch_lines - n), 0 if out else 1)
            if k:
                head, pending[0] = c.split(k, sum(map(len, c.lines[:k])))
                out.append(head)
            break
        yield out
        # The sender's budget: about one batch of records, given the last take's overhead.
        raw = sum(c.nbytes for c in out)
        budget = max(1, room * raw // (raw + records.overhead * sum(map(len, out))))


def bench_encode(
    chunks: list[Chunk], modes: list[str], args: argparse.Namespace
) -> dict[str, float]:
    """Print and return lines per CPU second of encoding every chunk, per mode (the best of
    ``--reps`` rounds; the modes take turns, so a busy spell on a shared machine hurts each
    mode alike)."""
    total = sum(map(len, chunks))
    best = dict.fromkeys(modes, float("inf"))
    wire = dict.fromkeys(modes, 0)
    for _ in range(args.reps):
        for mode in modes:
            cfg = kafka_config(mode, args)
            route = Route(cfg.topic, cfg.format, dict(cfg.fields))
            records = Records(cfg, [route], compression_code(args.compression))
            out = 0
            spent = 0.0
            for take in takes(chunks, records, args.batch_bytes, args.batch_lines):
                c0 = cpu()
                for batch in records.batches(take, args.batch_bytes, args.batch_lines):
                    out += len(batch.payload or b"")
                spent += cpu() - c0
            best[mode] = min(best[mode], spent)
            wire[mode] = out
    rates = {mode: total / best[mode] for mode in modes}
    for mode in modes:
        ratio = rates[mode] / rates.get("raw", rates[mode])
        print(
            f"encode {mode:12s} {total:>9,d} lines  {rates[mode]:>12,.0f} lines/cpu-s  "
            f"{wire[mode] / total:6.1f} B/line on the wire  ({ratio:.2f}x raw)",
            flush=True,
        )
    return rates


def kafka_config(
    mode: str, args: argparse.Namespace, bootstrap: str = "127.0.0.1:9092", topic: str = "bench"
) -> KafkaConfig:
    """The Kafka config of one mode, on a fixed host and with two static fields."""
    cfg = build(
        KafkaConfig,
        bootstrap_servers=[bootstrap],
        topic=topic,
        compression=args.compression,
        batch_max_bytes=args.batch_bytes,
        batch_max_lines=args.batch_lines,
        fields={"env": "prod", "service": "shop"},
        **MODES[mode],
    )
    return replace(cfg, host="bench-host")


def bench_kafka(bootstrap: str, chunks: list[Chunk], mode: str, args: argparse.Namespace) -> bool:
    """Send the chunks through KafkaSender (real Ledger/DropQueue), read back, check, report."""
    configure("warning", "console")
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    ledger = Ledger()
    queue = DropQueue(QueueConfig(max_lines=4_000_000, max_bytes=2 << 30), ledger)
    cfg = kafka_config(mode, args, bootstrap, topic)
    route = Route(topic, cfg.format, dict(cfg.fields))
    sender = KafkaSender(cfg, queue, ledger, get_logger(), [route])
    sender.start()
    t = time.monotonic()
    while not sender.connected:
        if time.monotonic() - t > 30:
            print("not connected after 30 s")
            return False
        time.sleep(0.01)
    lines = [x for c in chunks for x in c.lines]

    def feed() -> None:
        for c in chunks:
            queue.put(c)

    t0, c0 = time.monotonic(), cpu()
    feeder = threading.Thread(target=feed)
    feeder.start()
    feeder.join()
    while ledger.snapshot().queued_lines:
        time.sleep(0.0005)
    dt, dc = time.monotonic() - t0, cpu() - c0
    while ledger.snapshot().in_flight_lines:  # until the fences confirm (or not) every line
        time.sleep(0.0005)
    confirmed_s = time.monotonic() - t0
    sender.stop(time.monotonic() + 10)
    snap = ledger.snapshot()
    n = len(lines)
    print(
        f"sender {mode:12s} {n:,d} lines handed in {dt:.2f} s: {n / dt:,.0f} lines/s, "
        f"{n / dc:,.0f} lines/cpu-s (process CPU {dc:.2f} s)"
    )
    print("ledger:", snap.as_log())
    rtt = snap.fence_rtt
    print(
        f"confirmed after {confirmed_s:.2f} s; {snap.events.get('kafka_fences', 0):,d} fences, "
        f"round trip p50 <= {rtt.quantile(0.5)} s, p99 <= {rtt.quantile(0.99)} s"
    )
    consumer: Any = KafkaConsumer(
        topic,
        bootstrap_servers=[bootstrap],
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    got = []
    for msg in consumer:
        value = msg.value
        if cfg.format == "json":
            doc = json.loads(value)
            if doc.get("message_encoding") == "base64":
                value = base64.b64decode(doc["message"])
            else:
                value = doc["message"].encode()
        got.append(value)
        if len(got) >= n:
            break
    consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=[bootstrap])
    try:
        admin.delete_topics([topic])  # a shared broker keeps no benchmark data
    finally:
        admin.close()
    ok = got == lines and snap.sent_lines == n
    print(f"read back {len(got):,d} records: {'exact, in order' if ok else 'MISMATCH'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated of {', '.join(MODES)}"
    )
    ap.add_argument("--reps", type=int, default=3, help="runs per mode; the fastest counts")
    ap.add_argument("--batch-bytes", type=int, default=1000 * 1024)
    ap.add_argument("--batch-lines", type=int, default=20_000)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--profile", metavar="MODE", help="cProfile encoding in this mode")
    ap.add_argument(
        "--kafka", metavar="HOST:PORT", help="also send through the sender to this broker"
    )
    ap.add_argument("--format", default="raw", choices=sorted(MODES), help="mode for --kafka")
    args = ap.parse_args()
    chunks = make_chunks(args.lines)
    if args.profile:
        cfg = kafka_config(args.profile, args)
        records = Records(cfg, [Route(cfg.topic, cfg.format, dict(cfg.fields))])
        all_takes = list(takes(chunks, records, args.batch_bytes, args.batch_lines))
        cProfile.runctx(
            "for t in all_takes: list(records.batches(t, bb, bl))",
            globals(),
            {
                "all_takes": all_takes,
                "records": records,
                "bb": args.batch_bytes,
                "bl": args.batch_lines,
            },
            sort="tottime",
        )
        return 0
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes {sorted(unknown)}")
    bench_encode(chunks, modes, args)
    if args.kafka:
        return 0 if bench_kafka(args.kafka, chunks, args.format, args) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
