"""What each import of the daemon costs in memory and time, installed from a wheel as in production.

python bench/imports.py                               # the working tree, label "current"
python bench/imports.py --ref main --label before     # a git ref, built the same way
python bench/imports.py --label after --compare before
python bench/imports.py --show before after           # the table only, from imports.json

The shipper is built as a wheel (with wheels for its dependencies, like the Dockerfile) and
installed into a fresh virtual environment: an editable install would load importlib.metadata
and its friends, which production never does. Then `shipper run` starts three times on an
empty log (metrics on, one /metrics scrape, as a sidecar is scraped):

1. under `-X importtime` (each module's own import time) with a hook on the import system that
   reads VmRSS as every module starts and ends loading: a module's own RSS growth is its
   growth minus that of the modules it imported (like importtime's "self");
2. with the same hook reading tracemalloc's traced memory (Python allocations only);
3. clean, for the RSS of a running daemon after --idle seconds.

Modules are grouped into steps, in the order the daemon first starts each: every shipper
module, and every third-party distribution; a standard-library module counts towards the
step that first imported it. Results are merged into bench/results/imports.json under
--label, for a before/after table in bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from benchkit.broker import Broker, session_broker
from benchkit.procs import free_port, stop, tail
from benchkit.programs import RunSpec, shipper_config
from benchkit.report import now
from benchkit.shipmetrics import scrape

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
STARTUP = "(interpreter start-up)"
CONSOLE = "(console script)"  # what the generated `shipper` script imports before main()
RUNTIME = "(stdlib, imported while running)"  # called from start-up modules only
_KIB = 1024.0
_PROBE_IDLE_S = 3.0  # s the probed daemon runs after its first /metrics answer
_READY_TIMEOUT = 60.0

# Run by the venv's interpreter as `python -c _HOOK OUT MODE CONFIG`: patch the import system's
# loader step, then run the daemon as its console script does (`import re, sys; main()`). For
# every module loaded: name, the modules of the calling frames (innermost first: who imported
# it), thread, start time (monotonic), and its growth of VmRSS in KiB (MODE rss) or of traced
# bytes (MODE trace), with and without the modules it imported. Written to OUT when main()
# returns (SIGTERM). Only modules that start-up already loaded are used before the daemon runs
# (and _tracemalloc, _thread: built in).
_HOOK = r"""
import sys, _thread
import _frozen_importlib as _bootstrap
from time import monotonic

out_path, mode, config = sys.argv[1:4]

def rss():
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1])
    return 0

if mode == "trace":
    import _tracemalloc
    _tracemalloc.start()
    current = lambda: _tracemalloc.get_traced_memory()[0]
else:
    current = rss

records, stacks = [], {}
load = _bootstrap._load_unlocked
LOADER = ("importlib._bootstrap", "_frozen_importlib")

def callers():
    names, f = [], sys._getframe(2)
    while f is not None and len(names) < 16:
        name = f.f_globals.get("__name__") or "?"
        own = f.f_code is load_measured.__code__  # this hook, under a nested import
        if not own and not name.startswith(LOADER) and (not names or names[-1] != name):
            names.append(name)
        f = f.f_back
    return ",".join(names)

def load_measured(spec):
    tid = _thread.get_ident()
    stack = stacks.setdefault(tid, [])
    entry = [spec.name, callers(), tid, monotonic(), current(), 0]
    stack.append(entry)
    try:
        return load(spec)
    finally:
        stack.pop()
        grown = current() - entry[4]
        if stack:
            stack[-1][5] += grown
        records.append((entry[0], entry[1], tid, entry[3], grown, grown - entry[5]))

startup = sorted(sys.modules)
base = rss()
_bootstrap._load_unlocked = load_measured
rc = 1
try:
    import re
    from shipper.cli import main
    sys.argv = ["shipper", "run", "-c", config]
    rc = main()
finally:
    _bootstrap._load_unlocked = load
    import resource
    with open(out_path, "w") as f:
        f.write("startup\t" + " ".join(startup) + "\n")
        f.write("base\t%d\n" % base)
        f.write("maxrss\t%d\n" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        for r in records:
            f.write("load\t%s\t%s\t%d\t%.6f\t%d\t%d\n" % r)
sys.exit(rc)
"""

# Run by the venv's interpreter: top-level import name -> distribution, and the stdlib names.
_NAMES = r"""
import json, sys
from importlib.metadata import packages_distributions
import platform
print(json.dumps({"dists": packages_distributions(), "stdlib": sorted(sys.stdlib_module_names),
                  "builtin": sorted(sys.builtin_module_names),
                  "python": platform.python_version()}))
"""


# --- building and installing --------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def _source(ref: str | None, dest: Path) -> dict[str, Any]:
    """Put the sources of ref (or of the working tree, uncommitted edits included) in dest."""
    dest.mkdir(parents=True)
    if ref is not None:
        commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
        data = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", commit],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
        return {"ref": ref, "commit": commit, "dirty": False}
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return {
        "ref": "working tree",
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _install(src: Path, tmp: Path) -> Path:
    """Wheels for the shipper and its dependencies, installed offline into a fresh venv."""
    wheels = tmp / "wheels"
    print("imports: building wheels ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), str(src)],
        check=True,
    )
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    shipper_wheel = next(wheels.glob("shipper-*.whl"))
    print(f"imports: installing {shipper_wheel.name} into a fresh venv ...", flush=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-index",
            "--find-links",
            str(wheels),
            str(shipper_wheel),
        ],
        check=True,
    )
    return python


def _dists(python: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {d["name"]: d["version"] for d in json.loads(out)}


# --- running the daemon ---------------------------------------------------------------------


@dataclass
class _Daemon:
    proc: subprocess.Popen[bytes]
    stderr: Path
    metrics_url: str
    t0: float


@contextlib.contextmanager
def _daemon(
    python: Path, broker: Broker, topic: str, workdir: Path, hook: list[str] | None = None
) -> Iterator[_Daemon]:
    """`shipper run` from the venv on an empty log, metrics on a free port; stopped on exit.

    hook: [python options..., OUT, MODE] to run it under _HOOK instead of the console script.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "app.log"
    log.touch()
    port = free_port()
    spec = RunSpec(log, 0, topic, 1, broker.bootstrap, workdir)
    conf = workdir / "shipper.yaml"
    conf.write_text(yaml.safe_dump(shipper_config(spec, port), sort_keys=False), encoding="utf-8")
    if hook is None:
        argv = [str(python.with_name("shipper")), "run", "-c", str(conf)]
    else:
        *options, out, mode = hook
        argv = [str(python), *options, "-c", _HOOK, out, mode, str(conf)]
    err = workdir / "stderr"
    with err.open("wb") as err_f, (workdir / "stdout").open("wb") as out_f:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL, cwd=workdir
        )
        d = _Daemon(proc, err, f"http://127.0.0.1:{port}/metrics", t0)
        try:
            _wait_metrics(d)
            yield d
        finally:
            stop(proc)


def _wait_metrics(d: _Daemon) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while scrape(d.metrics_url, timeout=1.0) is None:
        if d.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"shipper did not start:\n{tail(d.stderr)}")
        time.sleep(0.1)


def _status(pid: int) -> dict[str, int]:
    keys = {"VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"}
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0])
    return out


@dataclass(frozen=True)
class _Load:
    """One module load seen by the hook; grown/own in KiB (rss) or bytes (trace)."""

    name: str
    callers: tuple[str, ...]
    thread: int
    started: float
    grown: int
    own: int


@dataclass
class _Probe:
    startup: set[str]
    base_kib: int
    maxrss_kib: int
    loads: list[_Load]
    import_us: dict[str, int]


def _probe(python: Path, broker: Broker, topic: str, workdir: Path, mode: str) -> _Probe:
    """Run the daemon under the hook (and, for mode rss, -X importtime) until idle + a scrape."""
    out = workdir / "loads.tsv"
    options = ["-X", "importtime"] if mode == "rss" else []
    with _daemon(python, broker, topic, workdir, [*options, str(out), mode]) as d:
        time.sleep(_PROBE_IDLE_S)
        scrape(d.metrics_url)  # what a Prometheus scrape loads is part of a running sidecar
        time.sleep(0.5)
        running = time.monotonic()  # later loads are the shutdown's
        err_size = d.stderr.stat().st_size
    if not out.exists():
        raise RuntimeError(f"the hooked daemon wrote no results:\n{tail(d.stderr)}")
    p = _Probe(set(), 0, 0, [], {})
    for line in out.read_text(encoding="utf-8").splitlines():
        key, _, rest = line.partition("\t")
        if key == "startup":
            p.startup = set(rest.split())
        elif key == "base":
            p.base_kib = int(rest)
        elif key == "maxrss":
            p.maxrss_kib = int(rest)
        elif key == "load":
            name, callers, thread, started, grown, own = rest.split("\t")
            if float(started) <= running:
                p.loads.append(
                    _Load(
                        name,
                        tuple(callers.split(",")),
                        int(thread),
                        float(started),
                        int(grown),
                        int(own),
                    )
                )
    p.loads.sort(key=lambda ld: ld.started)
    if mode == "rss":
        text = d.stderr.read_bytes()[:err_size].decode(errors="replace")
        for _depth, name, us in parse_importtime(text):
            p.import_us[name] = p.import_us.get(name, 0) + us
    return p


def parse_importtime(text: str) -> list[tuple[int, str, int]]:
    """`import time: self | cumulative | name` lines as (depth, name, self us); depth 0 = top."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.split("|", 2)
        if len(parts) != 3:
            continue
        self_us = int(parts[0].removeprefix("import time:").strip())
        name_field = parts[2].removeprefix(" ")
        depth = (len(name_field) - len(name_field.lstrip(" "))) // 2
        rows.append((depth, name_field.strip(), self_us))
    if rows:
        top = min(r[0] for r in rows)
        rows = [(d - top, n, us) for d, n, us in rows]
    return rows


def _idle_rss(
    python: Path, broker: Broker, topic: str, workdir: Path, idle: float
) -> dict[str, Any]:
    """A clean daemon's memory `idle` seconds after its start (one /metrics scrape at start-up)."""
    with _daemon(python, broker, topic, workdir) as d:
        time.sleep(max(0.0, d.t0 + idle - time.monotonic()))
        st = _status(d.proc.pid)
    return {
        "after_s": idle,
        "rss_mib": round(st["VmRSS"] / _KIB, 1),
        "peak_rss_mib": round(st["VmHWM"] / _KIB, 1),
        "rss_anon_mib": round(st.get("RssAnon", 0) / _KIB, 1),
        "rss_file_mib": round(st.get("RssFile", 0) / _KIB, 1),
        "threads": st.get("Threads"),
    }


# --- grouping the loads into steps ----------------------------------------------------------


@dataclass
class _Grouping:
    """Which step a module's cost goes to, and in which order the steps first start."""

    dists: dict[str, list[str]]
    stdlib: set[str]
    group: dict[str, str] = field(default_factory=dict)
    is_stdlib: dict[str, bool] = field(default_factory=dict)
    order: list[str] = field(default_factory=lambda: [STARTUP])

    def own(self, name: str) -> str | None:
        top = name.split(".", 1)[0]
        if top == "shipper":
            return name
        if top in self.stdlib:
            return None
        return "+".join(self.dists.get(top, [top]))

    def importer(self, ld: _Load) -> str:
        """The step of the innermost calling module that has one (start-up modules do not)."""
        for name in ld.callers:
            if name == "__main__":
                return CONSOLE
            if name in self.group:
                return self.group[name]
        return RUNTIME

    def assign(self, loads: list[_Load]) -> None:
        """loads in start order: a stdlib module goes to its importer's step."""
        for ld in loads:
            own = self.own(ld.name)
            g = own or self.importer(ld)
            self.group.setdefault(ld.name, g)
            self.is_stdlib.setdefault(ld.name, own is None)
            if g not in self.order:
                self.order.append(g)


def _steps(g: _Grouping, rss: _Probe, traced: _Probe) -> list[dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {
        name: {
            "step": name,
            "modules": 0,
            "rss_kib": 0,
            "of_which_stdlib_rss_kib": 0,
            "traced_kib": 0.0,
            "import_ms": 0.0,
        }
        for name in g.order
    }
    for ld in rss.loads:
        s = steps[g.group[ld.name]]
        s["modules"] += 1
        s["rss_kib"] += ld.own
        if g.is_stdlib[ld.name]:
            s["of_which_stdlib_rss_kib"] += ld.own
        s["import_ms"] += rss.import_us.get(ld.name, 0) / 1000
    for ld in traced.loads:
        if ld.name in g.group:
            steps[g.group[ld.name]]["traced_kib"] += ld.own / _KIB
    steps[STARTUP]["rss_kib"] = rss.base_kib
    steps[STARTUP]["modules"] = len(rss.startup)
    steps[STARTUP]["import_ms"] = sum(rss.import_us.get(m, 0) for m in rss.startup) / 1000
    steps[STARTUP]["traced_kib"] = None  # tracemalloc starts after start-up
    for name, row in steps.items():
        mine = sorted((ld for ld in rss.loads if g.group[ld.name] == name), key=lambda ld: -ld.own)
        row["heaviest_kib"] = {ld.name: ld.own for ld in mine[:3]}
    total = 0.0
    out = []
    for name in g.order:
        s = steps[name]
        total += s["rss_kib"]
        if s["traced_kib"] is not None:
            s["traced_kib"] = round(s["traced_kib"], 1)
        s["import_ms"] = round(s["import_ms"], 2)
        s["rss_mib_after"] = round(total / _KIB, 2)
        out.append(s)
    return out


def measure(python: Path, broker: Broker, tmp: Path, idle: float) -> dict[str, Any]:
    """Everything one label stores: steps, heaviest modules, idle RSS of a running daemon."""
    topic = f"bench-imports-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, 1)
    try:
        print("imports: `shipper run` under -X importtime and the RSS hook ...", flush=True)
        rss = _probe(python, broker, topic, tmp / "rss", "rss")
        print("imports: `shipper run` under the tracemalloc hook ...", flush=True)
        traced = _probe(python, broker, topic, tmp / "trace", "trace")
        print(f"imports: a clean `shipper run`, idle for {idle:.0f} s ...", flush=True)
        idle_doc = _idle_rss(python, broker, topic, tmp / "idle", idle)
    finally:
        broker.delete_topic(topic)
    meta = json.loads(
        subprocess.run([str(python), "-c", _NAMES], check=True, capture_output=True).stdout
    )
    grouping = _Grouping(meta["dists"], set(meta["stdlib"]) | set(meta["builtin"]))
    grouping.assign(rss.loads)
    heavy = sorted(rss.loads, key=lambda ld: -ld.own)[:20]
    main_thread = rss.loads[0].thread if rss.loads else None
    return {
        "python": meta["python"],
        "modules_at_startup": len(rss.startup),
        "modules_loaded": len(rss.loads),
        "modules_loaded_off_main_thread": sorted(
            ld.name for ld in rss.loads if ld.thread != main_thread
        ),
        "rss_start_mib": round(rss.base_kib / _KIB, 1),
        "rss_after_imports_mib": round((rss.base_kib + sum(ld.own for ld in rss.loads)) / _KIB, 1),
        "traced_by_imports_mib": round(sum(ld.own for ld in traced.loads) / _KIB / _KIB, 1),
        "maxrss_mib": round(rss.maxrss_kib / _KIB, 1),
        "steps": _steps(grouping, rss, traced),
        "heaviest_modules_rss_kib": [
            {"module": ld.name, "own_rss_kib": ld.own, "step": grouping.group.get(ld.name)}
            for ld in heavy
        ],
        "idle": idle_doc,
    }


# --- results --------------------------------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"runs": {}}
    doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    doc.setdefault("runs", {})
    return doc


def _save(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _package(step: str) -> str:
    return "shipper (own modules)" if step.startswith("shipper") else step


def _by_package(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps summed per package: all shipper modules in one row."""
    out: dict[str, dict[str, Any]] = {}
    for s in run["steps"]:
        row = out.setdefault(
            _package(s["step"]),
            {
                "step": _package(s["step"]),
                "rss_kib": 0,
                "of_which_stdlib_rss_kib": 0,
                "traced_kib": 0.0,
                "import_ms": 0.0,
            },
        )
        for key in ("rss_kib", "of_which_stdlib_rss_kib", "traced_kib", "import_ms"):
            row[key] = None if s[key] is None else row[key] + s[key]
    return list(out.values())


def _totals(r: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    return [
        ("after every import", r["rss_after_imports_mib"], r["traced_by_imports_mib"]),
        ("`shipper run`, idle: VmRSS", r["idle"]["rss_mib"], None),
        ("`shipper run`, idle: VmHWM", r["idle"]["peak_rss_mib"], None),
    ]


def _cells(s: dict[str, Any] | None) -> list[str]:
    if s is None:
        return ["-", "-", "-"]
    stdlib = s["of_which_stdlib_rss_kib"]
    rss = f"{s['rss_kib'] / _KIB:.1f}" + (f" ({stdlib / _KIB:.1f})" if stdlib >= 51 else "")
    traced = "-" if s["traced_kib"] is None else f"{s['traced_kib'] / _KIB:.1f}"
    return [rss, traced, f"{s['import_ms']:.0f}"]


def table(doc: dict[str, Any], labels: list[str], *, by_package: bool = False) -> str:
    """Markdown: per step (or package) and label, RSS MiB (of which stdlib), traced MiB and
    import ms; with two labels also the RSS difference; then the totals and the idle daemon."""
    runs = [doc["runs"][lb] for lb in labels]
    steps = [_by_package(r) if by_package else r["steps"] for r in runs]
    order = list(dict.fromkeys(s["step"] for ss in steps for s in ss))
    by = [{s["step"]: s for s in ss} for ss in steps]
    diff = len(labels) == 2
    head = ["step"] + [
        f"{lb}: {col}" for lb in labels for col in ("RSS MiB (stdlib)", "traced MiB", "import ms")
    ]
    head += ["RSS change MiB"] if diff else []
    rows = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for step in order:
        cells = [c for b in by for c in _cells(b.get(step))]
        if diff:
            a, b = (x.get(step, {}).get("rss_kib", 0) for x in by)
            cells.append(f"{(b - a) / _KIB:+.1f}")
        rows.append(f"| {step} | " + " | ".join(cells) + " |")
    totals = [_totals(r) for r in runs]
    for k, (title, _rss, _traced) in enumerate(totals[0]):
        cells = []
        for t in totals:
            _title, rss, traced = t[k]
            cells += [f"{rss}", "-" if traced is None else f"{traced}", ""]
        if diff:
            cells.append(f"{totals[1][k][1] - totals[0][k][1]:+.1f}")
        rows.append(f"| **{title}** | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ref", help="git ref to measure (default: the working tree)")
    p.add_argument("--label", default="current", help="name of this measurement in the JSON")
    p.add_argument("--compare", metavar="LABEL", help="print this label beside the new one")
    p.add_argument("--idle", type=float, default=10.0, help="seconds before the idle RSS reading")
    p.add_argument(
        "--show", nargs="+", metavar="LABEL", help="print the tables of stored labels and exit"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "imports.json", help="results JSON")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (venv, logs)")
    return p


def _print_tables(doc: dict[str, Any], labels: list[str]) -> None:
    idle = doc["runs"][labels[-1]]["idle"]["after_s"]
    print(f"\nBy package (idle: `shipper run` {idle:.0f} s after its start):\n")
    print(table(doc, labels, by_package=True))
    print("\nBy step, in the order the daemon first imports each:\n")
    print(table(doc, labels))


def main(argv: list[str] | None = None) -> int:
    """Build, install, measure, store under --label and print the table."""
    ns = _parser().parse_args(argv)
    doc = _load(ns.out)
    if ns.show:
        missing = [lb for lb in ns.show if lb not in doc["runs"]]
        if missing:
            raise SystemExit(f"imports: no such label(s) in {ns.out}: {missing}")
        _print_tables(doc, ns.show)
        return 0
    if ns.compare and ns.compare not in doc["runs"]:
        raise SystemExit(f"imports: no label {ns.compare!r} in {ns.out} to compare with")
    tmp = Path(tempfile.mkdtemp(prefix="shipper-imports-"))
    try:
        source = _source(ns.ref, tmp / "src")
        python = _install(tmp / "src", tmp)
        with session_broker(REPO, tmp) as broker:
            result = measure(python, broker, tmp, ns.idle)
        doc = _load(ns.out)
        doc["runs"][ns.label] = {
            "date": now(),
            "source": source,
            "dists": _dists(python),
            **result,
        }
        _save(ns.out, doc)
    finally:
        if ns.keep_tmp:
            print(f"imports: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    _print_tables(doc, [ns.compare, ns.label] if ns.compare else [ns.label])
    return 0


if __name__ == "__main__":
    sys.exit(main())
