"""Run `python -m shipper ARGS` with pyinstrument profiling every thread, one report per thread.

pyinstrument's own CLI samples only the main thread, and the shipper's work happens in its
tailer and sender threads, so this wrapper starts a Profiler inside each thread's run().
"""

from __future__ import annotations

import argparse
import runpy
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from pyinstrument import Profiler

__all__ = ["main"]

_done: list[tuple[str, Profiler]] = []
_lock = threading.Lock()
_original_run: Callable[[threading.Thread], None] = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    prof = Profiler(interval=0.001)
    prof.start()
    try:
        _original_run(self)
    finally:
        prof.stop()
        with _lock:
            _done.append((self.name, prof))


def _duration(prof: Profiler) -> float:
    session = prof.last_session
    return session.duration if session else 0.0


def _report(out: Path, main_prof: Profiler) -> None:
    """Worker threads in start order, then the main thread; short-lived threads left out."""
    with _lock:
        profiles = [*_done, ("MainThread", main_prof)]
    parts = []
    for name, prof in profiles:
        if _duration(prof) < 0.05:  # e.g. one /metrics request
            continue
        parts.append(f"===== thread {name} (sampled {_duration(prof):.2f} s) =====\n")
        parts.append(prof.output_text(unicode=True, color=False, short_mode=False))
    repo = str(Path(__file__).resolve().parents[2])
    out.write_text("".join(parts).replace(repo, "<repo>"), encoding="utf-8")


def main() -> int:
    """Command line: -o OUT then the shipper's own arguments."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("args", nargs=argparse.REMAINDER)
    ns = p.parse_args()
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    main_prof = Profiler(interval=0.001)
    main_prof.start()
    sys.argv = ["shipper", *ns.args]
    code: int | str | None = 0
    try:
        runpy.run_module("shipper", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    finally:
        main_prof.stop()
        _report(ns.output, main_prof)
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
