"""The throughput bar chart (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

__all__ = ["draw"]

_PANELS = [
    ("lines_per_s", "lines/s (median)", 1_000_000, "target >= 1,000,000"),
    ("cpu_s_per_mline", "CPU seconds per million lines", 1.0, "target <= 1.0"),
    ("peak_rss_mib", "peak RSS (MiB)", 48.0, "shipper target <= 48 + queue"),
]
_COLORS = {"shipper": "#1f77b4", "kcat": "#ff7f0e", "rsyslog": "#2ca02c"}


def _panel(ax: Any, panel: tuple[str, str, float, str], tp: dict[str, Any]) -> None:
    key, title, target, label = panel
    progs = list(tp["summary"])
    names = [p + ("*" if tp["summary"][p].get("incomplete") else "") for p in progs]
    vals = [tp["summary"][p][key] or 0 for p in progs]
    ax.bar(names, vals, color=[_COLORS.get(p, "grey") for p in progs], alpha=0.8)
    for i, p in enumerate(progs):
        for status, face in (("ok", "black"), ("dropped", "none")):
            pts = [
                r[key]
                for r in tp["runs"]
                if r["program"] == p and r["status"] == status and r[key] is not None
            ]
            ax.scatter([i] * len(pts), pts, facecolors=face, edgecolors="black", s=14, zorder=3)
        if vals[i]:
            digits = {"lines_per_s": ",.0f", "cpu_s_per_mline": ".2f"}.get(key, ".1f")
            ax.annotate(
                format(vals[i], digits),
                (i, vals[i]),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.axhline(target, color="red", linestyle="--", linewidth=1, label=label)
    ax.set_ylim(0, max([*vals, target]) * 1.25)
    if key == "lines_per_s":
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _footer(scenarios: dict[str, Any]) -> str:
    parts = []
    lat = scenarios.get("latency")
    if lat:
        parts.append(
            f"latency @ {lat['rate']:,.0f}/s: p50 {lat['p50_ms']} ms, "
            f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms"
        )
    st = scenarios.get("stall")
    if st and "skipped" not in st:
        parts.append(
            f"stall {st['stall_s']:.0f} s @ {st['rate']:,.0f}/s: peak RSS "
            f"{st['peak_rss_mib']} MiB, ledger balanced: {st['balanced']}"
        )
    return "   |   ".join(parts)


def draw(
    path: Path, tp: dict[str, Any], machine: dict[str, Any], scenarios: dict[str, Any]
) -> None:
    """Write a 3-panel PNG: lines/s, CPU-s per M lines, peak RSS."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    for ax, panel in zip(axes, _PANELS, strict=True):
        _panel(ax, panel, tp)
    fig.suptitle(
        f"shipper vs kcat vs rsyslog: {tp['lines']:,} lines x {tp['reps']} reps, "
        f"{tp['partitions']} partition(s), {machine.get('nproc')} CPUs, "
        f"Kafka {machine.get('kafka')} ({tp['date'][:10]})",
        fontsize=11,
    )
    footer = _footer(scenarios)
    if footer:
        fig.text(0.5, 0.01, footer, ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
