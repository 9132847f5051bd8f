"""Summaries, the printed table, results JSON (merged per scenario) and the bar chart."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchkit.broker import kafka_version

__all__ = [
    "TARGETS",
    "format_latency",
    "format_stall",
    "format_table",
    "machine_info",
    "now",
    "plot",
    "plot_footprint",
    "ratios",
    "summarize",
    "write_json",
]

TARGETS = {"lines_per_s": 1_000_000, "cpu_s_per_mline": 1.0, "peak_rss_mib": 48.0, "p99_ms": 20.0}


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _first_line(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    wanted = [ln for ln in lines if "ersion" in ln or "rsyslogd" in ln]
    first = (wanted or lines)[:1]
    return first[0].replace(" compiled with:", "") if first else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(repo: Path, external_broker: bool) -> dict[str, Any]:
    """What the figures depend on: CPUs, memory, versions of everything involved."""
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "mem_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kafka": "external (KAFKA_BOOTSTRAP)" if external_broker else kafka_version(repo),
        "shipper": _version("shipper"),
        "kafka_python": _version("kafka-python"),
        "kcat": _first_line(["kcat", "-V"]),
        "rsyslog": _first_line(["rsyslogd", "-v"]),
    }


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict[str, Any]], programs: list[str]) -> dict[str, dict[str, Any]]:
    """Per program: ok runs, median lines/s, median CPU-s per M lines, median/max peak RSS."""
    out: dict[str, dict[str, Any]] = {}
    for prog in programs:
        mine = [r for r in runs if r["program"] == prog]
        ok = [r for r in mine if r["status"] == "ok"]
        incomplete = not ok
        if incomplete:  # e.g. every shipper run dropped lines: show those, flagged
            ok = [r for r in mine if r["status"] == "dropped"]
        rss = [r["peak_rss_mib"] for r in ok if r["peak_rss_mib"] is not None]
        lps = _median([r["lines_per_s"] for r in ok])
        metrics = [r["metrics"] for r in ok if r.get("metrics")]
        out[prog] = {
            "runs": len(mine),
            "ok": len(ok),
            "lines_per_s": round(lps) if lps is not None else None,
            "cpu_s_per_mline": _median(
                [r["cpu_s_per_mline"] for r in ok if r["cpu_s_per_mline"] is not None]
            ),
            "peak_rss_mib": _median(rss),
            "peak_rss_mib_max": max(rss) if rss else None,
            "failures": sorted({r["status"] for r in mine} - {"ok"}),
            "incomplete": incomplete and bool(ok),
        }
        for q in ("p50", "p99"):  # the shipper's fences under load (bucket upper bounds)
            key = f"fence_rtt_{q}_ms"
            got = [m[key] for m in metrics if m.get(key) is not None]
            if got:
                out[prog][key] = _median(got)
    return out


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """shipper/peer and peer/shipper for median lines/s ("shipper/kcat": 0.8 = 0.8x)."""
    base = summary.get("shipper", {}).get("lines_per_s")
    out: dict[str, float] = {}
    for prog, s in summary.items():
        if prog == "shipper" or not base or not s["lines_per_s"]:
            continue
        out[f"shipper/{prog}"] = round(base / s["lines_per_s"], 2)
        out[f"{prog}/shipper"] = round(s["lines_per_s"] / base, 2)
    return out


def _cell(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def format_table(summary: dict[str, dict[str, Any]], rat: dict[str, float]) -> str:
    """The throughput table and one ratio line per peer."""
    head = (
        f"{'program':10s} {'ok/runs':>7s} {'lines/s (median)':>17s} {'CPU-s/M lines':>14s} "
        f"{'peak RSS MiB':>13s}"
    )
    rows = [head, "-" * len(head)]
    for prog, s in summary.items():
        mark = "*" if s.get("incomplete") else ""
        rows.append(
            f"{prog + mark:10s} {s['ok']:>3d}/{s['runs']:<3d} "
            f"{_cell(s['lines_per_s'], ',d'):>17s} "
            f"{_cell(s['cpu_s_per_mline'], '.2f'):>14s} "
            f"{_cell(s['peak_rss_mib'], '.1f'):>13s}"
        )
    for key, v in rat.items():
        if key.startswith("shipper/"):
            peer = key.split("/", 1)[1]
            rows.append(f"{key} = {v:.2f}x  ({peer}/shipper = {rat[f'{peer}/shipper']:.2f}x)")
    if not rat:
        rows.append("ratios: need an ok run of shipper and of a peer")
    fences = summary.get("shipper", {})
    if fences.get("fence_rtt_p50_ms") is not None:
        rows.append(
            f"shipper fence round trip under load (median of runs, histogram bucket bounds): "
            f"p50 <= {fences['fence_rtt_p50_ms']} ms, p99 <= {fences.get('fence_rtt_p99_ms')} ms"
        )
    if any(s.get("incomplete") for s in summary.values()):
        rows.append(
            "* no run delivered all N lines (queue_full drops): medians of the runs "
            "that read all N, timed to the last record's arrival; ok/runs counts those"
        )
    return "\n".join(rows)


def format_latency(d: dict[str, Any]) -> str:
    """One paragraph for the latency scenario."""
    return (
        f"latency at {d['rate']:,.0f} lines/s for {d['duration_s']:.0f} s: "
        f"p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms, max {d['max_ms']} ms "
        f"(target p99 <= {TARGETS['p99_ms']:.0f} ms); delivered {d['delivered']:,} of "
        f"{d['written']:,} lines; CPU {d['cpu_s']} s, peak RSS {d['peak_rss_mib']} MiB"
    )


def format_stall(d: dict[str, Any]) -> str:
    """One paragraph for the stall scenario."""
    if "skipped" in d:
        return f"stall: skipped ({d['skipped']})"
    led = d["ledger"] or {}
    dropped = {k: int(v) for k, v in led.get("dropped", {}).items() if v} or 0
    unconfirmed = {k: int(v) for k, v in led.get("unconfirmed", {}).items() if v} or 0
    return (
        f"stall ({d['rate']:,.0f} lines/s, broker frozen {d['stall_s']:.0f} s, queue "
        f"{d['queue_max_bytes']}, {d['queue_max_lines']:,} lines): peak RSS "
        f"{d['peak_rss_mib']} MiB "
        f"({d['rss_before_stall_mib']} before the freeze; target <= "
        f"{TARGETS['peak_rss_mib']:.0f} MiB + queue bound); written {d['written']:,}, "
        f"read {led.get('read', 0):,.0f}: confirmed {led.get('confirmed', 0):,.0f}, "
        f"unconfirmed {unconfirmed}, dropped {dropped}, in flight "
        f"{led.get('in_flight', 0):,.0f}, queued {led.get('queued', 0):,.0f}; balanced: "
        f"{d['balanced']}; at broker {d['delivered']:,} (confirmed <= at broker <= confirmed "
        f"+ unconfirmed: {d.get('bracketed')})"
    )


def _redacted(obj: Any, redact: dict[str, str]) -> Any:
    """obj with local paths (e.g. in stderr tails) replaced by placeholders."""
    text = json.dumps(obj, ensure_ascii=False)
    for old, new in sorted(redact.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(json.dumps(old)[1:-1], new)
    return json.loads(text)


def write_json(
    path: Path,
    machine: dict[str, Any],
    scenarios: dict[str, Any],
    redact: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge this session's scenarios into path (other scenarios' results are kept)."""
    scenarios = _redacted(scenarios, redact or {})
    doc: dict[str, Any] = {}
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
    doc["machine"] = machine
    doc.setdefault("scenarios", {}).update(scenarios)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return doc


def plot(path: Path, doc: dict[str, Any]) -> bool:
    """Bar chart of the throughput summary (medians; dots are single runs); False if none."""
    tp = doc.get("scenarios", {}).get("throughput")
    if not tp:
        return False
    from benchkit.chart import draw  # noqa: PLC0415  # matplotlib is slow to import

    draw(path, tp, doc.get("machine", {}), doc.get("scenarios", {}))
    return True


def plot_footprint(out: Path, doc: dict[str, Any]) -> Path | None:
    """CPU % and RSS by rate, and idle CPU, into OUT-footprint.png beside out; None if none."""
    fp = doc.get("scenarios", {}).get("footprint")
    if not fp or not fp.get("runs"):
        return None
    from benchkit.footchart import draw_footprint  # noqa: PLC0415  # matplotlib is slow

    png = out.with_name(out.stem + "-footprint.png")
    draw_footprint(png, fp, doc.get("machine", {}))
    return png
