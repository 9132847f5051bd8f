"""Benchmark the shipper beside kcat and rsyslog on a private local Kafka (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from benchkit.broker import Broker, session_broker
from benchkit.footprint import TAILERS, footprint_failed, format_footprint, run_footprint
from benchkit.gen import GEN_VERSION, cached_log, line_stats
from benchkit.latency import run_latency
from benchkit.options import Options
from benchkit.programs import PROGRAMS, RunSpec
from benchkit.report import (
    format_latency,
    format_stall,
    format_table,
    machine_info,
    now,
    plot,
    plot_footprint,
    ratios,
    summarize,
    write_json,
)
from benchkit.stall import run_stall
from benchkit.throughput import run_one, run_throughput, runs_as_dicts, warm_cache

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "bench"
RESULTS = REPO / "bench" / "results"
SCENARIOS = ("throughput", "latency", "stall", "footprint")
_FULL: dict[str, Any] = {
    "lines": 5_000_000,
    "reps": 3,
    "duration": 30.0,
    "stall": 30.0,
    "stall_before": 5.0,
    "stall_after": 10.0,
    "footprint_step": 30.0,
    "footprint_settle": 3.0,
}
_QUICK: dict[str, Any] = {
    "lines": 200_000,
    "reps": 1,
    "duration": 5.0,
    "stall": 5.0,
    "stall_before": 2.0,
    "stall_after": 3.0,
    "footprint_step": 5.0,
    "footprint_settle": 1.0,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="throughput")
    p.add_argument("--lines", type=int, help="lines in the throughput file (default 5,000,000)")
    p.add_argument("--reps", type=int, help="throughput repetitions (default 3)")
    p.add_argument("--partitions", type=int, default=1, help="partitions of every topic")
    p.add_argument(
        "--programs",
        default=",".join(PROGRAMS),
        help="comma-separated subset of shipper,kcat,rsyslog (throughput; footprint runs "
        "the tailers among them: shipper, rsyslog)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per throughput run")
    p.add_argument("--poll", type=float, default=0.2, help="end-offset poll interval, seconds")
    p.add_argument("--duration", type=float, help="latency writer seconds (default 30)")
    p.add_argument("--rate", type=float, default=10_000.0, help="latency writer lines/s")
    p.add_argument("--stall", type=float, help="seconds the broker is frozen (default 30)")
    p.add_argument("--stall-rate", type=float, default=100_000.0, help="stall writer lines/s")
    p.add_argument(
        "--footprint-step", type=float, help="footprint: seconds per rate step (default 30)"
    )
    p.add_argument(
        "--footprint-settle",
        type=float,
        help="footprint: seconds at each step's start left out of the figures (default 3)",
    )
    p.add_argument(
        "--footprint-rates",
        default="0,100,1000,10000,50000",
        help="footprint: comma-separated writer rates in lines/s (an idle step follows)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200,000 lines, 1 rep, short latency/stall, 5 s footprint steps; "
        "writes quick.json",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="instead of the scenarios: one shipper throughput run under pyinstrument "
        "(all threads) into bench/results/profile.txt",
    )
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the unmeasured kcat pass that warms the broker before rep 1",
    )
    p.add_argument(
        "--format",
        choices=["raw", "json"],
        default="raw",
        help="the shipper's record format (kafka.format) in the throughput and profile runs",
    )
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/latest.json)")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    return p


def _options(ns: argparse.Namespace, tmp: Path) -> Options:
    base = _QUICK if ns.quick else _FULL
    programs = tuple(p.strip() for p in ns.programs.split(",") if p.strip())
    unknown = set(programs) - set(PROGRAMS)
    if unknown or not programs:
        raise SystemExit(f"bench: unknown program(s) {sorted(unknown)}; choose from {PROGRAMS}")
    step = ns.footprint_step or base["footprint_step"]
    settle = _settle(ns.footprint_settle, base["footprint_settle"])
    if not 0 <= settle < step:
        raise SystemExit("bench: --footprint-settle must be >= 0 and shorter than the step")
    return Options(
        repo=REPO,
        tmp=tmp,
        lines=ns.lines or base["lines"],
        reps=ns.reps or base["reps"],
        partitions=ns.partitions,
        programs=programs,
        timeout=ns.timeout,
        poll=ns.poll,
        latency_rate=ns.rate,
        duration=ns.duration or base["duration"],
        stall_rate=ns.stall_rate,
        stall_before=base["stall_before"],
        stall=ns.stall or base["stall"],
        stall_after=base["stall_after"],
        warmup=not ns.no_warmup,
        footprint_step=step,
        footprint_settle=settle,
        footprint_rates=_rates(ns.footprint_rates),
        record_format=ns.format,
    )


def _settle(given: float | None, default: float) -> float:
    return default if given is None else given


def _rates(text: str) -> tuple[int, ...]:
    try:
        rates = tuple(int(r.replace("_", "")) for r in text.split(",") if r.strip())
    except ValueError:
        raise SystemExit(f"bench: --footprint-rates: not a list of integers: {text!r}") from None
    if not rates or any(r < 0 for r in rates):
        raise SystemExit(f"bench: --footprint-rates: need rates >= 0: {text!r}")
    return rates


def _raise_interrupt(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def _bench_file(lines: int) -> tuple[Path, dict[str, float]]:
    """The cached N-line file and its measured shape (cached beside it)."""
    print(f"bench: preparing a {lines:,}-line file (cached under .cache/bench) ...", flush=True)
    file = cached_log(CACHE, lines)
    stats_path = file.with_name(file.name + ".stats.json")
    if stats_path.exists():
        return file, json.loads(stats_path.read_text(encoding="utf-8"))
    stats = line_stats(file)
    stats_path.write_text(json.dumps(stats), encoding="utf-8")
    return file, stats


def _available(programs: tuple[str, ...]) -> list[str]:
    binaries = {"shipper": None, "kcat": "kcat", "rsyslog": "rsyslogd"}
    out = []
    for prog in programs:
        exe = binaries[prog]
        if exe is not None and shutil.which(exe) is None:
            print(f"bench: {exe} not found, skipping {prog}", file=sys.stderr)
            continue
        out.append(prog)
    return out


_SETUP = {
    "shipper": "shipper run -c CONF: one input (start_at: beginning), fresh registry, "
    "metrics on a free port, log level warning, queue and kafka defaults",
    "kcat": "kcat -P -b BOOTSTRAP -t TOPIC -X acks=0 -l FILE (librdkafka defaults otherwise)",
    "rsyslog": "rsyslogd -n: imfile (inotify, readMode 0, freshStartTail off, fresh work "
    "dir) -> omkafka (template %msg%, request.required.acks=0, own ruleset); "
    "main_queue dequeueBatchSize 4096, maxMessageSize 64k, the rest default",
    "warmup": "one unmeasured kcat pass over the file before rep 1 (broker JIT warm-up)",
    "timing": "wall = program start -> first end-offset poll with sum == N (kcat: and exited); "
    "CPU/RSS from /proc just before SIGTERM (kcat: wait4 rusage)",
}


def _throughput(broker: Broker, opts: Options) -> dict[str, Any]:
    file, stats = _bench_file(opts.lines)
    programs = _available(opts.programs)
    runs = runs_as_dicts(run_throughput(broker, file, _replace_programs(opts, programs)))
    summary = summarize(runs, programs)
    rat = ratios(summary)
    print("\n" + format_table(summary, rat) + "\n", flush=True)
    return {
        "date": now(),
        "lines": opts.lines,
        "reps": opts.reps,
        "partitions": opts.partitions,
        "format": opts.record_format,
        "poll_s": opts.poll,
        "timeout_s": opts.timeout,
        "warmup": opts.warmup,
        "generator_version": GEN_VERSION,
        "file": stats,
        "setup": _SETUP,
        "summary": summary,
        "ratios": rat,
        "runs": runs,
    }


def _replace_programs(opts: Options, programs: list[str]) -> Options:
    return replace(opts, programs=tuple(programs))


def _latency(broker: Broker, opts: Options) -> dict[str, Any]:
    print(
        f"bench: latency: {opts.latency_rate:,.0f} lines/s for {opts.duration:.0f} s ...",
        flush=True,
    )
    d = {"date": now(), **run_latency(broker, opts)}
    print(format_latency(d), flush=True)
    return d


def _stall(broker: Broker, opts: Options) -> dict[str, Any]:
    print(
        f"bench: stall: {opts.stall_rate:,.0f} lines/s, broker frozen {opts.stall:.0f} s "
        f"after {opts.stall_before:.0f} s ...",
        flush=True,
    )
    d = {"date": now(), **run_stall(broker, opts)}
    print(format_stall(d), flush=True)
    return d


def _footprint(broker: Broker, opts: Options) -> dict[str, Any]:
    programs = _available(tuple(p for p in opts.programs if p in TAILERS))
    rates = ", ".join(f"{r:,}" for r in opts.footprint_rates)
    print(
        f"bench: footprint: {', '.join(programs)} at {rates} lines/s and idle, "
        f"{opts.footprint_step:.0f} s per step ({opts.footprint_settle:.0f} s settle), "
        "on a topic created before the start, on a new topic, then with the broker "
        "unreachable ...",
        flush=True,
    )
    d = {"date": now(), **run_footprint(broker, opts, programs)}
    print("\n" + format_footprint(d) + "\n", flush=True)
    return d


def _profile(broker: Broker, opts: Options) -> int:
    file, _ = _bench_file(opts.lines)
    warm_cache(file)
    out = RESULTS / "profile.txt"
    RESULTS.mkdir(parents=True, exist_ok=True)
    topic = "bench-profile"
    broker.create_topic(topic, opts.partitions)
    spec = RunSpec(
        file,
        opts.lines,
        topic,
        opts.partitions,
        broker.bootstrap,
        opts.tmp / "profile",
        opts.record_format,
    )
    r = run_one("shipper", spec, broker, opts, profile_out=out)
    print(
        f"bench: profiled run: {r.status}, {r.wall_s} s (slower than unprofiled); "
        f"report in bench/results/profile.txt",
        flush=True,
    )
    return 0 if r.status == "ok" else 1


def _session(broker: Broker, ns: argparse.Namespace, opts: Options) -> int:
    if ns.profile:
        return _profile(broker, opts)
    chosen = SCENARIOS if ns.scenario == "all" else (ns.scenario,)
    runners = {
        "throughput": _throughput,
        "latency": _latency,
        "stall": _stall,
        "footprint": _footprint,
    }
    results = {name: runners[name](broker, opts) for name in chosen}
    out = ns.out or RESULTS / ("quick.json" if ns.quick else "latest.json")
    machine = machine_info(REPO, broker.pid_file is None)
    doc = write_json(out, machine, results, redact={str(REPO): "<repo>", str(opts.tmp): "<tmp>"})
    png = out.with_suffix(".png")
    drawn = plot(png, doc)
    print(f"bench: wrote {_rel(out)}" + (f" and {_rel(png)}" if drawn else ""), flush=True)
    if "footprint" in results:
        fp_png = plot_footprint(out, doc)
        print(f"bench: wrote {_rel(fp_png)}" if fp_png else "bench: no footprint chart", flush=True)
    failed = any(r["status"] != "ok" for r in results.get("throughput", {}).get("runs", []))
    failed = failed or footprint_failed(results.get("footprint", {}))
    return 1 if failed else 0


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen scenarios against a private broker, report."""
    ns = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="shipper-bench-"))
    try:
        opts = _options(ns, tmp)  # inside: a usage error must not leave the temp dir behind
        with session_broker(REPO, tmp) as broker:
            return _session(broker, ns, opts)
    except KeyboardInterrupt:
        print("bench: interrupted; stopping programs and the broker", file=sys.stderr)
        return 130
    finally:
        if ns.keep_tmp:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
