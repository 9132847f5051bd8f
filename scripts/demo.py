"""`make demo`: a local Kafka, a sample log writer with rotation, and the shipper, end to end.

Ctrl-C (or --duration) stops the writer and the shipper, then prints the records the topic
holds next to the shipper's final ledger, and stops the broker it started.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.readback import end_offsets  # noqa: E402

WORDS = [
    "user=alice",
    "user=bob",
    "status=200",
    "status=404",
    "status=500",
    "path=/api/v1",
    "path=/login",
    "latency_ms=12",
    "latency_ms=340",
    "region=eu-west",
    "caché=ok",
]


def writer(log: Path, rate: int, stop: threading.Event, counter: list[int]) -> None:
    """Append ``rate`` lines/s to ``log``; rename-rotate it every 20,000 lines."""
    rnd = random.Random(7)
    n = 0
    while not stop.is_set():
        t0 = time.monotonic()
        batch = []
        for _ in range(max(rate // 10, 1)):
            n += 1
            words = " ".join(rnd.sample(WORDS, 4))
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            batch.append(f"{stamp} seq={n} level=info {words}\n")
        with log.open("a", encoding="utf-8") as f:
            f.write("".join(batch))
        counter[0] = n
        if n % 20_000 < len(batch):
            os.replace(log, log.with_name(log.name + f".{n}"))
        stop.wait(max(0.1 - (time.monotonic() - t0), 0))


def main() -> int:
    """Run the demo; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    ap.add_argument("--rate", type=int, default=2000, help="sample lines per second")
    args = ap.parse_args()

    work = ROOT / ".demo"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.iterdir():
        old.unlink()
    (work / "registry.json").unlink(missing_ok=True)

    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        bootstrap = external
    else:
        print("== starting a local Kafka (first run resolves its jars with mvn) ...", flush=True)
        out = subprocess.run(
            [str(ROOT / "scripts" / "kafka-local"), "start"],
            check=True,
            capture_output=True,
            text=True,
        )
        bootstrap = out.stdout.strip().splitlines()[-1]
    topic = f"demo-{int(time.time())}"
    conf = work / "shipper.yaml"
    conf.write_text(f"""\
inputs:
  - paths: ["{logs}/app.log*"]
    start_at: beginning
tail:
  rotate_wait: 2s
kafka:
  bootstrap_servers: ["{bootstrap}"]
  topic: {topic}
registry:
  path: {work}/registry.json
metrics:
  listen: 127.0.0.1:0
log:
  format: console
  stats_interval: 5s
shutdown:
  drain_timeout: 5s
""")
    print(f"== broker {bootstrap}, topic {topic}, logs in {logs}", flush=True)
    print("== shipper running; stats every 5 s. Ctrl-C to stop.\n", flush=True)

    stop = threading.Event()
    written = [0]
    (logs / "app.log").touch()
    t = threading.Thread(
        target=writer, args=(logs / "app.log", args.rate, stop, written), daemon=True
    )
    shipper = subprocess.Popen(
        [sys.executable, "-m", "shipper", "run", "-c", str(conf)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    t.start()
    final: dict[str, object] = {}
    got_sigint = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: got_sigint.set())

    def pump() -> None:
        assert shipper.stdout is not None
        for line in shipper.stdout:
            sys.stdout.write(line)
            if "shutdown_complete" in line:
                final["line"] = line.strip()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + args.duration if args.duration else None
    while not got_sigint.is_set() and shipper.poll() is None:
        if deadline and time.monotonic() > deadline:
            break
        got_sigint.wait(0.2)
    stop.set()
    t.join()
    time.sleep(0.5)  # let the last lines be read
    shipper.send_signal(signal.SIGTERM)
    rc = shipper.wait(30)
    reader.join(5)
    time.sleep(0.5)
    records = sum(end_offsets(bootstrap, topic).values())
    print("\n== result")
    print(f"   lines written by the sample writer: {written[0]}")
    print(f"   records in topic {topic}: {records}")
    print(f"   shipper final ledger: {final.get('line', '(no shutdown_complete line)')}")
    if not external:
        subprocess.run(
            [str(ROOT / "scripts" / "kafka-local"), "stop"], check=False, capture_output=True
        )
        print("== local Kafka stopped")
    return rc


if __name__ == "__main__":
    sys.exit(main())
