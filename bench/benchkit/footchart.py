"""The footprint chart: CPU % and RSS by writer rate, and idle CPU per state (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt

from benchkit.footprint import AFTER, IDLE_STATES, TARGETS

__all__ = ["draw_footprint"]

_COLORS = {"shipper": "#1f77b4", "rsyslog": "#2ca02c"}
_STYLES = {"topic_exists": "-", "topic_new": "--"}
_TARGET = {"color": "red", "linestyle": ":", "linewidth": 1.2}


def _label(step: str) -> str:
    if step == AFTER:
        return "0\n(after)"
    n = int(step)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def _ladder_runs(fp: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in fp["runs"] if r["variant"] in _STYLES and r["steps"]]


def _steps(fp: dict[str, Any]) -> list[str]:
    return [*(str(r) for r in fp["rates"]), AFTER]


def _lines(ax: Any, fp: dict[str, Any], key: str) -> None:
    labels = _steps(fp)
    for r in _ladder_runs(fp):
        xs, ys = [], []
        for s in r["steps"]:
            if s["label"] in labels and s[key] is not None:
                xs.append(labels.index(s["label"]))
                ys.append(s[key])
        ax.plot(
            xs,
            ys,
            _STYLES[r["variant"]],
            marker="o",
            markersize=3,
            color=_COLORS.get(r["program"], "grey"),
            label=f"{r['program']}, {r['variant'].replace('_', ' ')}",
        )
    ax.set_xticks(range(len(labels)), [_label(s) for s in labels], fontsize=8)
    ax.set_xlabel("writer lines/s", fontsize=8)


def _cpu_panel(ax: Any, fp: dict[str, Any]) -> None:
    _lines(ax, fp, "cpu_pct")
    labels = _steps(fp)
    marks = [("0", TARGETS["idle_cpu_pct"]), (AFTER, TARGETS["idle_cpu_pct"])]
    marks += [("1000", TARGETS["cpu_1k_pct"]), ("10000", TARGETS["cpu_10k_pct"])]
    first = True
    for step, limit in marks:
        if step in labels:
            i = labels.index(step)
            ax.hlines(limit, i - 0.3, i + 0.3, label="shipper target" if first else None, **_TARGET)
            first = False
    ax.set_ylim(bottom=0)
    ax.set_title("CPU, % of one core (after each step's settle)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _rss_panel(ax: Any, fp: dict[str, Any]) -> None:
    _lines(ax, fp, "rss_median_mib")
    labels = _steps(fp)
    for r in _ladder_runs(fp):
        pts = [
            (labels.index(s["label"]), s["peak_rss_mib"])
            for s in r["steps"]
            if s["label"] in labels and s["peak_rss_mib"] is not None
        ]
        if pts:
            ax.scatter(
                *zip(*pts, strict=True),
                marker="^",
                s=14,
                color=_COLORS.get(r["program"], "grey"),
                zorder=3,
            )
    ax.axhline(TARGETS["rss_mib"], label=f"shipper target < {TARGETS['rss_mib']:g} MiB", **_TARGET)
    ax.set_ylim(bottom=0)
    ax.set_title("RSS MiB: median (line), step peak VmHWM (triangle)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")


def _idle_panel(ax: Any, fp: dict[str, Any]) -> None:
    programs = list(dict.fromkeys(i["program"] for i in fp["idle"]))
    width = 0.8 / max(1, len(programs))
    for k, prog in enumerate(programs):
        vals = []
        for state in IDLE_STATES:
            hit = [i for i in fp["idle"] if i["program"] == prog and i["state"] == state]
            vals.append(hit[0]["cpu_pct"] or 0 if hit else 0)
        xs = [j + (k - (len(programs) - 1) / 2) * width for j in range(len(IDLE_STATES))]
        ax.bar(xs, vals, width, color=_COLORS.get(prog, "grey"), alpha=0.8, label=prog)
        for x, v in zip(xs, vals, strict=True):
            ax.annotate(
                f"{v:.2f}",
                (x, v),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.axhline(TARGETS["idle_cpu_pct"], label="shipper target", **_TARGET)
    ax.set_xticks(range(len(IDLE_STATES)), [s.replace("_", "\n") for s in IDLE_STATES], fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_title("idle CPU, % of one core (empty log)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")


def _footer(fp: dict[str, Any]) -> str:
    parts = []
    for r in _ladder_runs(fp):
        if r["program"] != "shipper":
            continue
        for s in r["steps"]:
            lat = s.get("latency") or {}
            if lat.get("p99_ms") is not None:
                parts.append(
                    f"{r['variant'].replace('_', ' ')} @ {s['rate']:,}/s: "
                    f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms"
                )
    verdicts = {True: "met", False: "NOT met", None: "no figures"}
    met = [f"{t['id']}: {verdicts[t['met']]}" for t in fp.get("targets", [])]
    line1 = "shipper write->broker: " + "; ".join(parts) if parts else ""
    return line1 + ("\ntargets: " + ", ".join(met) if met else "")


def draw_footprint(path: Path, fp: dict[str, Any], machine: dict[str, Any]) -> None:
    """Write a 3-panel PNG: CPU % by rate, RSS by rate, idle CPU by state."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.0))
    _cpu_panel(axes[0], fp)
    _rss_panel(axes[1], fp)
    _idle_panel(axes[2], fp)
    fig.suptitle(
        f"footprint: {' vs '.join(fp['programs'])}, {fp['step_s']:.0f} s per step "
        f"({fp['settle_s']:.0f} s settle), {machine.get('nproc')} CPUs, "
        f"Kafka {machine.get('kafka')} ({fp['date'][:10]})",
        fontsize=11,
    )
    fig.text(0.5, 0.01, _footer(fp), ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
