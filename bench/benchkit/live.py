"""A shipper daemon kept running while a scenario writes to its input file."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchkit.procs import free_port, reap, stop, tail
from benchkit.programs import BENCH_DIR, RunSpec, shipper_command, shipper_config
from benchkit.shipmetrics import healthy

__all__ = ["LiveShipper", "running_shipper", "start_writer", "writer_result"]


@dataclass
class LiveShipper:
    """The running daemon, its /metrics URL and where its stderr goes."""

    proc: subprocess.Popen[bytes]
    metrics_url: str
    stderr: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


def _wait_healthy(sh: LiveShipper, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not healthy(sh.metrics_url):
        reap(sh.proc)
        if sh.proc.returncode is not None:
            raise RuntimeError(f"shipper exited with code {sh.proc.returncode}:\n{tail(sh.stderr)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"shipper not healthy after {timeout:.0f}s:\n{tail(sh.stderr)}")
        time.sleep(0.1)


@contextlib.contextmanager
def running_shipper(
    spec: RunSpec, queue: dict[str, Any] | None = None, timeout: float = 30.0
) -> Iterator[LiveShipper]:
    """Start the shipper on spec.file with metrics on a free port; stop it on exit."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = spec.workdir / "shipper.yaml"
    conf.write_text(
        yaml.safe_dump(shipper_config(spec, port, queue), sort_keys=False), encoding="utf-8"
    )
    argv, env = shipper_command(conf)
    err = spec.workdir / "shipper.stderr"
    with err.open("wb") as err_f, (spec.workdir / "shipper.stdout").open("wb") as out_f:
        proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, env=env, stdin=subprocess.DEVNULL)
        sh = LiveShipper(proc, f"http://127.0.0.1:{port}/metrics", err)
        try:
            _wait_healthy(sh, timeout)
            yield sh
        finally:
            stop(proc)


@contextlib.contextmanager
def start_writer(
    file: Path, rate: float, duration: float, stamp: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """Run benchkit.writer appending rate lines/s to file for duration s; kill it on exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_DIR), env.get("PYTHONPATH")]))
    argv = [
        sys.executable,
        "-m",
        "benchkit.writer",
        str(file),
        "--rate",
        str(rate),
        "--duration",
        str(duration),
    ]
    if stamp:
        argv.append("--stamp")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def writer_result(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """Wait for the writer and return how many lines it wrote."""
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"writer failed with exit code {proc.returncode}")
    return int(json.loads(out)["written"])
