"""`make demo`: a local Kafka, a sample log writer with rotation, and the shipper, end to end.

Ctrl-C (or --duration) stops the writer, lets the shipper read the last lines, stops it with
SIGTERM, prints the records the topic holds next to the shipper's final ledger, and stops
the broker it started. A clean stop exits 0, also under `make demo`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.readback import end_offsets  # noqa: E402
from tests.support.wait import wait_until  # noqa: E402

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


def take_terminal() -> Callable[[], None]:
    """Make this script the terminal's foreground process group, so that Ctrl-C reaches it
    alone; return what gives the terminal back.

    Under `make demo`, make shares our process group, and make answers SIGINT by killing
    itself with it (after reporting the recipe as failed) whatever the recipe then does. As
    a job-control shell does for a job, we move to a group of our own and take the
    terminal's foreground: Ctrl-C is then ours to turn into a clean stop, and make sees our
    exit code. Without a terminal, or when we lead our group already (run from a shell),
    nothing changes.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return lambda: None
    try:
        before = os.tcgetpgrp(tty)
    except OSError:
        os.close(tty)
        return lambda: None
    if before != os.getpgrp() or os.getpgrp() == os.getpid():
        os.close(tty)
        return lambda: None
    # tcsetpgrp from a group that is not in the foreground sends SIGTTOU: ignore it.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.setpgid(0, 0)
    os.tcsetpgrp(tty, os.getpgrp())

    def give_back() -> None:
        # If that group is gone (make was killed), there is nothing to give back.
        with contextlib.suppress(OSError):
            os.tcsetpgrp(tty, before)
        os.close(tty)

    return give_back


def read_lines(url: str) -> int:
    """The shipper's ``shipper_lines_read_total`` from its /metrics at ``url``."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        m = re.search(rb"^shipper_lines_read_total (\S+)$", r.read(), re.MULTILINE)
    return int(float(m.group(1))) if m else 0


def exit_code(rc: int) -> int:
    """The shipper's exit status as a shell reports it (128 + N when killed by signal N)."""
    return rc if rc >= 0 else 128 - rc


def main() -> int:
    """Run the demo; return the exit code (0 after a clean stop, Ctrl-C included)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=0, help="stop after N seconds (0: Ctrl-C)")
    ap.add_argument("--rate", type=int, default=2000, help="sample lines per second")
    args = ap.parse_args()
    got_sigint = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: got_sigint.set())
    give_back = take_terminal()
    try:
        return run(args, got_sigint)
    finally:
        give_back()


def wait_for_stop(
    shipper: subprocess.Popen[str],
    final: dict[str, str],
    got_sigint: threading.Event,
    duration: float,
) -> None:
    """Return on Ctrl-C or once the shipper has run ``duration`` seconds (0: until Ctrl-C).

    The duration counts from when the shipper runs (its start-up can take seconds on a busy
    machine), and a Ctrl-C during start-up waits for it too: a SIGTERM that came before the
    shipper installed its handlers would kill it.
    """
    deadline: float | None = None
    started_by = time.monotonic() + 60
    while shipper.poll() is None:
        now = time.monotonic()
        if "metrics" in final:  # its shipper_started line was seen
            if got_sigint.is_set():
                return
            if deadline is None and duration:
                deadline = now + duration
            if deadline is not None and now > deadline:
                return
        elif now > started_by:
            print("== the shipper did not start within 60 s", flush=True)
            return
        got_sigint.wait(0.2)


def run(args: argparse.Namespace, got_sigint: threading.Event) -> int:
    """Start everything, wait for Ctrl-C or the duration, stop in order, print the result."""
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
            check=False,
            capture_output=True,
            text=True,
        )
        if out.returncode:
            sys.stderr.write(out.stdout + out.stderr)
            return 130 if got_sigint.is_set() else 1
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
    # A process group of its own: Ctrl-C reaches only this script, which stops the shipper
    # once, after the writer (a second signal during its drain would end it at once).
    shipper = subprocess.Popen(
        [sys.executable, "-m", "shipper", "run", "-c", str(conf)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        process_group=0,
    )
    t.start()
    final: dict[str, str] = {}

    def pump() -> None:
        assert shipper.stdout is not None
        for line in shipper.stdout:
            sys.stdout.write(line)
            if "shipper_started" in line:
                m = re.search(r"metrics=(\S+)", line)
                if m:
                    final["metrics"] = "http://" + m.group(1)
            if "shutdown_complete" in line:
                final["line"] = line.strip()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    wait_for_stop(shipper, final, got_sigint, args.duration)
    stop.set()
    t.join()
    if shipper.poll() is None and "metrics" in final:
        # SIGTERM stops reading at once: first let the shipper read what was written.
        try:
            wait_until(lambda: read_lines(final["metrics"]) >= written[0], 30, "the last lines")
        except (AssertionError, OSError) as exc:
            print(f"== {exc}", flush=True)
    shipper.send_signal(signal.SIGTERM)
    rc = shipper.wait(30)
    reader.join(5)
    m = re.search(r"lines_sent=(\d+)", final.get("line", ""))
    sent = int(m.group(1)) if m else 0
    try:  # acks=0: the last batches may still be on their way to the broker
        wait_until(lambda: sum(end_offsets(bootstrap, topic).values()) >= sent, 10, "records")
    except AssertionError as exc:
        print(f"== {exc}", flush=True)
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
    return exit_code(rc)


if __name__ == "__main__":
    sys.exit(main())
