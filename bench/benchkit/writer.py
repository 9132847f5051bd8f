"""Append benchmark lines to a file at a steady rate (run as a separate process)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchkit.gen import body_pool

__all__ = ["main"]

_TICK = 0.001


def _lines(bodies: tuple[str, ...], start: int, count: int, stamp: bool) -> bytes:
    """count lines; with stamp each begins with ts=<time.time_ns()> taken now."""
    n = len(bodies)
    if stamp:
        now = time.time_ns()
        return "".join(
            f"ts={now} seq={i} {bodies[i % n]}\n" for i in range(start, start + count)
        ).encode()
    return "".join(f"seq={i} {bodies[i % n]}\n" for i in range(start, start + count)).encode()


def write(path: str, rate: float, duration: float, stamp: bool) -> int:
    """Append rate lines/s for duration seconds; return the number of lines written."""
    bodies = body_pool()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    written = 0
    try:
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration:
            due = min(int(rate * elapsed), int(rate * duration)) - written
            if due > 0:
                os.write(fd, _lines(bodies, written, due, stamp))
                written += due
            time.sleep(_TICK)
        rest = int(rate * duration) - written
        if rest > 0:
            os.write(fd, _lines(bodies, written, rest, stamp))
            written += rest
    finally:
        os.close(fd)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: FILE --rate R --duration S [--stamp]; prints {"written": n} as JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("file")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--stamp", action="store_true", help="prefix each line with ts=<ns>")
    args = p.parse_args(argv)
    written = write(args.file, args.rate, args.duration, args.stamp)
    sys.stdout.write(json.dumps({"written": written}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
