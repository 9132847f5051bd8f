"""Scale scenario: many files in one directory plus many nested directories under ``**``.

Measures, with the shipper's tail settings at their defaults:

1. first start: every file holds one line; the time until the broker holds them all;
2. idle: CPU (share of one core) over ``scale_idle`` seconds with nothing written;
3. how long a line appended to a random (long closed) file, and a first line in a new file
   of a new nested directory, take to reach the broker (one at a time, median and max);
4. a restart with nothing to read: files opened again (none expected) and idle CPU.

Targets (issue 8): all lines within 60 s; idle under 2% of a core; appended line and new
file within 2 s; no file reopened at idle.
"""

from __future__ import annotations

import random
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from benchkit.broker import Broker
from benchkit.options import Options
from benchkit.procs import free_port, proc_usage, reap, stop, tail
from benchkit.programs import shipper_command
from benchkit.shipmetrics import healthy, scrape

__all__ = ["SCALE_TARGETS", "format_scale", "run_scale"]

SCALE_TARGETS = {"first_start_s": 60.0, "idle_cpu_pct": 2.0, "latency_s": 2.0}
_PROBES = 20  # appended lines and new files, each timed on its own
_POLL = 0.02  # end-offset poll while timing a probe


def make_tree(root: Path, flat: int, nested: int) -> list[Path]:
    """``flat`` files in ``root/flat`` and one file in each of ``nested`` directories under
    ``root/deep`` (three levels), each holding one line; return the files."""
    files = []
    (root / "flat").mkdir(parents=True, exist_ok=True)
    for i in range(flat):
        files.append(root / "flat" / f"f{i:06d}.log")
    for i in range(nested):
        d = root / "deep" / f"a{i // 100:03d}" / f"b{i // 10 % 10}" / f"c{i:05d}"
        d.mkdir(parents=True, exist_ok=True)
        files.append(d / "x.log")
    for i, f in enumerate(files):
        f.write_bytes(b"scale first line of file %07d\n" % i)
    return files


def _config(root: Path, work: Path, bootstrap: str, topic: str, port: int) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "paths": [str(root / "flat" / "*.log"), str(root / "deep" / "**" / "*.log")],
                "start_at": "beginning",
            }
        ],
        "kafka": {"bootstrap_servers": bootstrap.split(","), "topic": topic},
        "registry": {"path": str(work / "registry.json")},
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        "log": {"level": "warning"},
    }


@contextmanager
def _shipper(conf: Path, work: Path, url: str, tag: str) -> Iterator[subprocess.Popen[bytes]]:
    argv, env = shipper_command(conf)
    err = work / f"shipper-{tag}.stderr"
    with err.open("wb") as err_f, (work / f"shipper-{tag}.stdout").open("wb") as out_f:
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, env=env, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not healthy(url):
                reap(proc)
                if proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"shipper did not start ({proc.returncode}):\n{tail(err)}")
                time.sleep(0.1)
            yield proc
        finally:
            stop(proc)


def _cpu(pid: int) -> float:
    usage = proc_usage(pid)
    return usage.cpu_s if usage is not None else float("nan")


def _idle_cpu_pct(pid: int, seconds: float) -> float:
    """Share of one core the process used over ``seconds`` of doing nothing."""
    c0, t0 = _cpu(pid), time.monotonic()
    time.sleep(seconds)
    return round(100 * (_cpu(pid) - c0) / (time.monotonic() - t0), 2)


def _wait_total(broker: Broker, topic: str, want: int, timeout: float, poll: float) -> int:
    deadline, total = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        total = broker.end_total(topic, 1) or total
        if total >= want:
            break
        time.sleep(poll)
    return total


def _probe(broker: Broker, topic: str, total: int, act: Any) -> float | None:
    """Seconds from ``act()`` to one more record at the broker (None after 30 s)."""
    t0 = time.monotonic()
    act()
    got = _wait_total(broker, topic, total + 1, 30.0, _POLL)
    return round(time.monotonic() - t0, 3) if got > total else None


def _stats(values: list[float | None]) -> dict[str, Any]:
    done = sorted(v for v in values if v is not None)
    return {
        "n": len(values),
        "arrived": len(done),
        "median_s": done[len(done) // 2] if done else None,
        "max_s": done[-1] if done else None,
    }


def _opened(url: str) -> int:
    """files_opened so far, from /metrics."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith('shipper_events_total{event="files_opened"}'):
            return int(float(line.split()[-1]))
    return 0


def run_scale(broker: Broker, opts: Options) -> dict[str, Any]:
    """Run the scale scenario; return its figures."""
    root = opts.tmp / "scale" / "logs"
    work = opts.tmp / "scale"
    files = make_tree(root, opts.scale_files, opts.scale_dirs)
    n = len(files)
    topic = f"bench-scale-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 1)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    conf = work / "shipper.yaml"
    conf.write_text(yaml.safe_dump(_config(root, work, broker.bootstrap, topic, port)))
    rng = random.Random(8)
    out: dict[str, Any] = {"files": opts.scale_files, "nested_dirs": opts.scale_dirs}
    t0 = time.monotonic()
    with _shipper(conf, work, url, "first") as proc:
        total = _wait_total(broker, topic, n, 600.0, opts.poll)
        out["first_start_s"] = round(time.monotonic() - t0, 2) if total >= n else None
        out["first_start_cpu_s"] = round(_cpu(proc.pid), 2)
        time.sleep(5)  # let the last batch settle and the files go idle
        opened = _opened(url)
        out["idle_cpu_pct"] = _idle_cpu_pct(proc.pid, opts.scale_idle)
        out["reopened_at_idle"] = _opened(url) - opened
        appended: list[float | None] = []
        for f in rng.sample(files, _PROBES):

            def append(f: Path = f) -> None:
                with f.open("ab") as out:
                    out.write(b"scale appended to %s\n" % f.name.encode())

            appended.append(_probe(broker, topic, n, append))
            n += appended[-1] is not None
        news: list[float | None] = []
        for i in range(_PROBES):
            new = root / "deep" / "new" / f"d{i:02d}" / "x.log"

            def create(new: Path = new, i: int = i) -> None:
                # Content of its own: a file holding what another holds is taken for a copy.
                new.parent.mkdir(parents=True, exist_ok=True)
                new.write_bytes(b"scale new file %02d\n" % i)

            news.append(_probe(broker, topic, n, create))
            n += news[-1] is not None
        out["append_latency"] = _stats(appended)
        out["new_file_latency"] = _stats(news)
        led = scrape(url)
        out["ledger"] = led.as_dict() if led is not None else None
        usage = proc_usage(proc.pid)
        out["peak_rss_mib"] = round(usage.peak_rss_kib / 1024, 1) if usage else None
    with _shipper(conf, work, url, "restart") as proc:
        time.sleep(5)
        out["restart_files_opened"] = _opened(url)
        out["restart_idle_cpu_pct"] = _idle_cpu_pct(proc.pid, opts.scale_idle)
    out["delivered"] = broker.end_total(topic, 1)
    out["targets"] = SCALE_TARGETS
    broker.delete_topic(topic)
    return out


def format_scale(d: dict[str, Any]) -> str:
    """One paragraph for the scale scenario."""
    a, nf = d["append_latency"], d["new_file_latency"]
    return (
        f"scale ({d['files']:,} files + {d['nested_dirs']:,} nested directories): first start "
        f"{d['first_start_s']} s (target <= {SCALE_TARGETS['first_start_s']:.0f} s, "
        f"{d['first_start_cpu_s']} CPU-s); idle {d['idle_cpu_pct']}% of a core (target < "
        f"{SCALE_TARGETS['idle_cpu_pct']:.0f}%), {d['reopened_at_idle']} files reopened; "
        f"appended line median {a['median_s']} s max {a['max_s']} s, new file median "
        f"{nf['median_s']} s max {nf['max_s']} s (target <= "
        f"{SCALE_TARGETS['latency_s']:.0f} s); restart: {d['restart_files_opened']} files "
        f"opened, idle {d['restart_idle_cpu_pct']}%; peak RSS {d['peak_rss_mib']} MiB"
    )
