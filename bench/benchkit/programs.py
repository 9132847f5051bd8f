"""How each benchmarked program is configured and launched for one run."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchkit.procs import free_port

__all__ = ["PROGRAMS", "Launch", "RunSpec", "launch_for", "shipper_command", "shipper_config"]

PROGRAMS = ("shipper", "kcat", "rsyslog")
BENCH_DIR = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunSpec:
    """What one run ships and where: file, expected lines, topic and a private work dir."""

    file: Path
    lines: int
    topic: str
    partitions: int
    bootstrap: str
    workdir: Path
    record_format: str = "raw"  # the shipper's kafka.format


@dataclass
class Launch:
    """A command line plus how the harness knows the program is done."""

    argv: list[str]
    exits_when_done: bool
    env: dict[str, str] | None = None
    metrics_url: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def shipper_config(
    spec: RunSpec, metrics_port: int | None, queue: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The shipper's YAML config as a dict: one input read from the beginning."""
    metrics: dict[str, Any] = {"enabled": False}
    if metrics_port is not None:
        metrics = {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"}
    cfg: dict[str, Any] = {
        "inputs": [{"paths": [str(spec.file)], "start_at": "beginning"}],
        "kafka": {
            "bootstrap_servers": spec.bootstrap.split(","),
            "topic": spec.topic,
            "format": spec.record_format,
        },
        "registry": {"path": str(spec.workdir / "registry.json")},
        "metrics": metrics,
        "log": {"level": "warning"},
    }
    if queue:
        cfg["queue"] = queue
    return cfg


def shipper_command(
    conf: Path, profile_out: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run the shipper (optionally under the thread profiler)."""
    env = dict(os.environ)
    if profile_out is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
        return [
            sys.executable,
            "-m",
            "benchkit.profthreads",
            "-o",
            str(profile_out),
            "run",
            "-c",
            str(conf),
        ], env
    script = Path(sys.executable).with_name("shipper")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "shipper"]
    return [*base, "run", "-c", str(conf)], env


def _shipper(spec: RunSpec, profile_out: Path | None) -> Launch:
    port = free_port()
    conf = spec.workdir / "shipper.yaml"
    conf.write_text(yaml.safe_dump(shipper_config(spec, port), sort_keys=False), encoding="utf-8")
    argv, env = shipper_command(conf, profile_out)
    return Launch(
        argv, exits_when_done=False, env=env, metrics_url=f"http://127.0.0.1:{port}/metrics"
    )


def _kcat(spec: RunSpec, _profile: Path | None) -> Launch:
    argv = [
        "kcat",
        "-P",
        "-b",
        spec.bootstrap,
        "-t",
        spec.topic,
        "-X",
        "acks=0",
        "-l",
        str(spec.file),
    ]
    return Launch(argv, exits_when_done=True)


# Tuning (documented in bench/README.md): the main queue is dequeued in batches of 4096
# (default 256); everything else is at its default. Tried and rejected: a 400k main queue
# with 8192 batches and imfile MaxSubmitAtOnce=16384 (slower, and RSS grew to 300-800 MiB).
_RSYSLOG_CONF = """\
global(workDirectory="{state}" processInternalMessages="on"
       parser.escapeControlCharactersOnReceive="off" maxMessageSize="64k")
main_queue(queue.dequeueBatchSize="4096")
module(load="imfile" mode="inotify")
module(load="omkafka")
template(name="raw" type="string" string="%msg%")
ruleset(name="bench") {{
  action(type="omkafka" broker=[{brokers}] topic="{topic}" template="raw"
         partitions.auto="{auto}" topicConfParam=["request.required.acks=0"])
}}
input(type="imfile" File="{file}" Tag="bench" ruleset="bench" freshStartTail="off"
      readMode="0")
"""


def _rsyslog(spec: RunSpec, _profile: Path | None) -> Launch:
    state = spec.workdir / "rsyslog-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    brokers = ", ".join(f'"{b}"' for b in spec.bootstrap.split(","))
    conf = spec.workdir / "rsyslog.conf"
    conf.write_text(
        _RSYSLOG_CONF.format(
            state=state,
            brokers=brokers,
            topic=spec.topic,
            auto="on" if spec.partitions > 1 else "off",
            file=spec.file,
        ),
        encoding="utf-8",
    )
    argv = ["rsyslogd", "-n", "-f", str(conf), "-i", str(spec.workdir / "rsyslogd.pid")]
    return Launch(argv, exits_when_done=False)


_LAUNCHERS = {"shipper": _shipper, "kcat": _kcat, "rsyslog": _rsyslog}


def launch_for(program: str, spec: RunSpec, profile_out: Path | None = None) -> Launch:
    """Write the program's config into spec.workdir and return how to start it."""
    return _LAUNCHERS[program](spec, profile_out)
