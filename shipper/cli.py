"""Argument parsing and exit codes; nothing else.

Exit codes: 0 success, 1 runtime failure (or unhealthy, for `health`), 2 invalid
configuration or usage, 3 valid configuration but the Kafka check of `validate --connect`
failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from shipper import __version__
from shipper.errors import ConfigError, RegistryLockedError

if TYPE_CHECKING:
    from shipper.config import Config

if TYPE_CHECKING:
    from shipper.config import Config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_CLUSTER = 3
DEFAULT_CONFIG = "/etc/shipper/shipper.yaml"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shipper",
        description="Tail log files into Apache Kafka, at-most-once, with every loss counted.",
        epilog="exit codes: 0 ok, 1 runtime failure (health: unhealthy), 2 invalid config, "
        "3 config valid but validate --connect found a problem with Kafka",
    )
    p.add_argument("--version", action="version", version=f"shipper {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config file")
    val = sub.add_parser(
        "validate",
        help="check a config file and exit (0 valid, 2 invalid, 3 Kafka check failed)",
        description="Check a config file: exit 0 when valid, 2 when not. With --connect, "
        "also connect to every bootstrap broker and every leader of the topic with the "
        "configured security, and check that the topic exists and that we may write to it "
        "(no record is written): exit 3 when the config is valid but that check fails.",
    )
    val.add_argument("-c", "--config", required=True, metavar="FILE", help="YAML config file")
    val.add_argument(
        "--connect",
        action="store_true",
        help="also check the brokers, the topic and our right to write (exit 3 if not ok)",
    )
    health = sub.add_parser(
        "health",
        help="ask a running shipper's /health (exit 0 when healthy, 1 otherwise)",
        description="GET /health on the address the config's metrics.listen gives "
        "(container HEALTHCHECK, scripts).",
    )
    health.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG, metavar="FILE", help="YAML config file"
    )
    health.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    return p


def _health(listen: str, timeout: float) -> int:
    """GET /health on ``listen`` (a wildcard host means this host); 0 if it answers 200."""
    import json  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    url = f"http://[{host}]:{port}/health" if ":" in host else f"http://{host}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310  # http only
            body = r.read(65536)
            code = r.status
    except urllib.error.HTTPError as e:
        body, code = e.read(65536), e.code
    except OSError as e:
        sys.stderr.write(f"shipper health: {url}: {e}\n")
        return EXIT_FAILURE
    try:
        status = json.loads(body).get("status", "?")
    except ValueError:
        status = "?"
    sys.stdout.write(f"{url}: {code} {status}\n")
    return EXIT_OK if code == 200 else EXIT_FAILURE


def _standard_fds() -> None:
    """Put /dev/null on descriptors 0, 1 and 2 if they were closed when we were started
    (``shipper run >&-``). Otherwise the next file or socket opened takes the lowest free
    number, and anything written to "stdout" or "stderr" (by us, a library, the interpreter)
    would land in a log file's descriptor or in the Kafka connection. Python has already
    set ``sys.stdout`` (``sys.stderr``) to None for a closed one: our log lines are then
    dropped and counted, not written to /dev/null."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd`` itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _say(text: str) -> None:
    """One line on stderr; a closed or broken stderr is no reason to fail."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # AttributeError: started with 2 closed
        pass


def _validate(path: str, cfg: Config, *, connect: bool) -> int:
    for warning in cfg.warnings:
        _say(f"config warning: {warning}")
    sys.stdout.write(f"{path}: ok\n")
    if not connect:
        return EXIT_OK
    from shipper.kafka.probe import probe  # noqa: PLC0415  # loads kafka-python

    sys.stdout.flush()
    return EXIT_OK if probe(cfg.kafka, sys.stdout) else EXIT_CLUSTER


def _report(err: ConfigError) -> int:
    for problem in err.problems:
        _say(f"config error: {problem}")
    return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    from shipper import config  # noqa: PLC0415  # keep --version and --help instant

    try:
        cfg = config.load(args.config)
    except ConfigError as err:
        return _report(err)
    if args.command == "health":
        if not cfg.metrics.enabled:
            sys.stderr.write("shipper health: metrics.enabled is false: no /health to ask\n")
            return EXIT_FAILURE
        return _health(cfg.metrics.listen, args.timeout)
    if args.command == "validate":
        return _validate(args.config, cfg, connect=args.connect)
    return _run(cfg, args.config)


def _run(cfg: Config, path: str) -> int:
    """``shipper run``: the daemon until it stops; exit 1 when it cannot start."""
    from shipper.daemon import Daemon  # noqa: PLC0415
    from shipper.log import configure  # noqa: PLC0415

    _standard_fds()
    configure(cfg.log.level, cfg.log.format)
    try:
        return Daemon(cfg, path).run()
    except RegistryLockedError as err:  # another shipper owns the registry: nothing was read
        _say(f"shipper: {err}")
    except OSError as err:  # e.g. the metrics port is taken
        _say(f"shipper: {err}")
    return EXIT_FAILURE
