"""Argument parsing and exit codes; nothing else.

Exit codes: 0 success, 1 runtime failure, 2 invalid configuration or usage.
"""

from __future__ import annotations

import argparse
import sys

from shipper import __version__
from shipper.errors import ConfigError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shipper",
        description="Tail log files into Apache Kafka, at-most-once, with every loss counted.",
    )
    p.add_argument("--version", action="version", version=f"shipper {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config file")
    val = sub.add_parser("validate", help="check a config file and exit (0 valid, 2 invalid)")
    val.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config file")
    return p


def _report(err: ConfigError) -> int:
    for problem in err.problems:
        sys.stderr.write(f"config error: {problem}\n")
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    from shipper import config  # noqa: PLC0415  # keep --version and --help instant

    try:
        cfg = config.load(args.config)
    except ConfigError as err:
        return _report(err)
    if args.command == "validate":
        sys.stdout.write(f"{args.config}: ok\n")
        return EXIT_OK
    from shipper.daemon import Daemon  # noqa: PLC0415
    from shipper.log import configure  # noqa: PLC0415

    configure(cfg.log.level, cfg.log.format)
    try:
        return Daemon(cfg).run()
    except OSError as err:  # e.g. the metrics port is taken
        sys.stderr.write(f"shipper: {err}\n")
        return EXIT_FAILURE
