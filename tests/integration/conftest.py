"""Run the real shipper as a process against the real broker, and read its metrics."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import KAFKA_LOCAL, Broker, free_port
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka

_SAMPLE = re.compile(r"^([a-z_]+)(?:\{([^}]*)\})? (\S+)$")


class Shipper:
    """A ``shipper run`` child process with its config, logs and metrics."""

    def __init__(
        self,
        cfg: dict[str, Any],
        workdir: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
        prefix: list[str] | None = None,
        *,
        http_timeout: float = 20.0,
    ) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.conf = workdir / f"shipper-{time.monotonic_ns()}.yaml.conf"
        self.conf.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / f"shipper-{time.monotonic_ns()}.out"
        self.metrics_url = f"http://{cfg['metrics']['listen']}"
        cmd = [sys.executable, "-m", "shipper", "run", "-c", str(self.conf)]
        if user:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        if prefix:  # e.g. ["prlimit", "--nofile=256:256"]
            cmd = [*prefix, *cmd]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            self.wait_http(http_timeout)
        except AssertionError:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._log.close()
            raise

    def wait_http(self, timeout: float = 20.0) -> None:
        """Wait until /health answers (the daemon is running)."""

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"shipper exited {self.proc.returncode}:\n{self.logs()}")
            try:
                urllib.request.urlopen(self.metrics_url + "/health", timeout=1).close()
            except OSError:  # not listening yet, or 503 while starting
                return False
            return True

        wait_until(answers, timeout, f"shipper on {self.metrics_url}", 0.05, self.logs)

    def health(self) -> tuple[int, dict[str, Any]]:
        """Status code and JSON body of /health."""
        try:
            with urllib.request.urlopen(self.metrics_url + "/health", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as ``{"name{labels}": value}``."""
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = _SAMPLE.match(line)
            if m:
                name = m.group(1) + (f"{{{m.group(2)}}}" if m.group(2) else "")
                out[name] = float(m.group(3))
        return out

    def ledger(self) -> dict[str, Any]:
        """read/sent/queued/dropped-by-reason from /metrics."""
        return ledger_from_metrics(self.metrics())

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 60.0, what: str = "condition"
    ) -> dict[str, Any]:
        """Poll the ledger until ``pred`` holds; return that ledger."""
        last: dict[str, Any] = {}

        def check() -> dict[str, Any] | None:
            last.update(self.ledger())
            return dict(last) if pred(last) else None

        got = wait_until(check, timeout, what, 0.1, lambda: f"ledger={last}\n{self.logs()[-3000:]}")
        assert got is not None
        return got

    def rounds(self, polls: int = 3, rescans: int = 0, timeout: float = 60.0) -> dict[str, Any]:
        """Wait until the tailer has looked at every open file ``polls`` more times and
        expanded the globs ``rescans`` more times; return the ledger then.

        This is how a test waits for "nothing more arrives": after that much work, anything
        the tailer would wrongly read (again) has been read.
        """
        events = self.ledger()["events"]
        want_polls = events.get("tail_polls", 0) + polls
        want_rescans = events.get("tail_rescans", 0) + rescans
        return self.wait_for(
            lambda led: (
                led["events"].get("tail_polls", 0) >= want_polls
                and led["events"].get("tail_rescans", 0) >= want_rescans
            ),
            timeout,
            f"{polls} more polls and {rescans} more rescans",
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the process and wait for it; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            self._log.close()
        return rc

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def logs(self) -> str:
        """Everything the process printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines."""
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def final_ledger(self) -> dict[str, Any]:
        """The fields of the ``shutdown_complete`` log line."""
        done = [e for e in self.events() if e.get("event") == "shutdown_complete"]
        assert done, f"no shutdown_complete line:\n{self.logs()[-3000:]}"
        return done[-1]


def ledger_from_metrics(m: dict[str, float]) -> dict[str, Any]:
    """Extract the ledger figures from a metrics sample dict."""
    dropped = {}
    for k, v in m.items():
        if k.startswith("shipper_lines_dropped_total{"):
            reason = k.split('reason="', 1)[1].split('"', 1)[0]
            dropped[reason] = int(v)
    lost = {}
    for k, v in m.items():
        if k.startswith("shipper_bytes_lost_total{"):
            lost[k.split('reason="', 1)[1].split('"', 1)[0]] = int(v)
    events = {}
    for k, v in m.items():
        if k.startswith("shipper_events_total{"):
            events[k.split('event="', 1)[1].split('"', 1)[0]] = int(v)
    unconfirmed = {}
    for k, v in m.items():
        if k.startswith("shipper_lines_unconfirmed_total{"):
            unconfirmed[k.split('reason="', 1)[1].split('"', 1)[0]] = int(v)
    return {
        "read": int(m.get("shipper_lines_read_total", 0)),
        "sent": int(m.get("shipper_lines_sent_total", 0)),
        "confirmed": int(m.get("shipper_lines_confirmed_total", 0)),
        "in_flight": int(m.get("shipper_lines_in_flight", 0)),
        "unconfirmed": unconfirmed,
        "queued": int(m.get("shipper_queue_lines", 0)),
        "dropped": dropped,
        "lost_bytes": lost,
        "events": events,
        "balanced": m.get("shipper_ledger_balanced") == 1,
    }


def base_config(
    broker: Broker, topic: str, workdir: Path, paths: list[str], **over: Any
) -> dict[str, Any]:
    """A config for tests: fast polling, registry and metrics in the test's own places."""
    cfg: dict[str, Any] = {
        "inputs": [{"paths": paths, "start_at": "beginning"}],
        "tail": {"rescan_interval": "1s", "poll_interval": "100ms", "rotate_wait": "2s"},
        "queue": {"max_lines": 100_000, "max_bytes": "64MiB"},
        "kafka": {
            "bootstrap_servers": [broker.bootstrap],
            "topic": topic,
            "unavailable_timeout": "2s",
        },
        "registry": {"path": str(workdir / "registry.json")},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "log": {"level": "info", "format": "json", "stats_interval": "5s"},
        "shutdown": {"drain_timeout": "5s"},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


#: What the ``start_shipper`` fixture gives: start a shipper process on a config.
Start = Callable[..., Shipper]


@pytest.fixture(name="start_shipper")
def fixture_start_shipper(tmp_path: Path) -> Iterator[Callable[..., Shipper]]:
    """Factory that starts shippers and makes sure they are gone after the test."""
    started: list[Shipper] = []

    def start(cfg: dict[str, Any], workdir: Path | None = None, **kw: Any) -> Shipper:
        s = Shipper(cfg, workdir or tmp_path, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.kill()


def append(path: Path, lines: list[bytes] | bytes) -> None:
    """Append bytes (or lines, each with a newline) to ``path``."""
    data = lines if isinstance(lines, bytes) else b"".join(x + b"\n" for x in lines)
    with path.open("ab") as f:
        f.write(data)


def ledger_balances(led: dict[str, Any]) -> bool:
    """``read == sent + dropped + queued`` for a ledger from ``ledger_from_metrics`` (the one
    place that knows how the ledger's states are named)."""
    return bool(
        led["balanced"]
        and led["read"] == led["sent"] + sum(led["dropped"].values()) + led["queued"]
    )


def final_balances(final: dict[str, Any]) -> bool:
    """The same for the fields of a ``shutdown_complete`` line."""
    return bool(
        final["balanced"] is True
        and final["lines_read"]
        == final["lines_sent"] + final["lines_dropped"] + final["lines_queued"]
    )


# -- brokers of a test's own -------------------------------------------------------------------
# Settings of the caller's shell that would change the shape of a broker of our own.
_SHAPE_VARS = (
    "KAFKA_NODES",
    "KAFKA_FAULT_PORT",
    "KAFKA_CONTROLLER_PORT",
    "KAFKA_SASL_SSL_PORT",
    "KAFKA_SSL_PORT",
    "KAFKA_SASL_PLAINTEXT_PORT",
    "KAFKA_BOOTSTRAP",
)


class LocalKafka:
    """A broker (or cluster) of a test's own, started with scripts/kafka-local: with a
    fault listener a proxy can sit in front of, with the security listeners, or several
    nodes. It may be killed and frozen; ``close`` thaws, stops and deletes it."""

    def __init__(self, nodes: int = 1, fault: bool = False, security: bool = False) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="shipper-kafka-own-"))
        self.env = {k: v for k, v in os.environ.items() if k not in _SHAPE_VARS}
        self.env.update(KAFKA_HOME_DIR=str(self.home), KAFKA_PORT=str(free_port()))
        if security:
            self.env["KAFKA_SECURITY"] = "1"
        if nodes > 1:
            self.env["KAFKA_NODES"] = str(nodes)
        if fault:
            self.env["KAFKA_FAULT_PORT"] = str(free_port())
        self.info: dict[str, str] = {}

    def run(self, *args: str, timeout: float = 240) -> str:
        """Run kafka-local; its stdout, or a test failure with its stderr."""
        p = subprocess.run(
            [str(KAFKA_LOCAL), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if p.returncode != 0:
            pytest.fail(f"kafka-local {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
        return p.stdout

    def start(self, *args: str) -> None:
        """Start every node (or the one given with --node K); read the addresses."""
        self.run("start", *args)
        self.info = dict(kv.split("=", 1) for kv in shlex.split(self.run("env", timeout=30)))

    @property
    def bootstrap(self) -> str:
        """Where clients connect directly."""
        return self.info["KAFKA_BOOTSTRAP"]

    def pid(self, node: int = 1) -> int:
        """The process id of node ``node``."""
        return int(self.run("pid", "--node", str(node), timeout=30).strip())

    def kill(self, node: int = 1) -> None:
        """SIGKILL node ``node``: a crash, no controlled shutdown."""
        self.run("kill", "--node", str(node), timeout=60)

    def close(self) -> None:
        """Stop every node and delete its state."""
        for pid in self._frozen():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        subprocess.run(
            [str(KAFKA_LOCAL), "stop", "--purge"],
            env=self.env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        shutil.rmtree(self.home, ignore_errors=True)

    def _frozen(self) -> list[int]:
        out = []
        for pidfile in self.home.rglob("kafka.pid"):
            with contextlib.suppress(ValueError, OSError):
                out.append(int(pidfile.read_text().strip()))
        return out


@dataclass(frozen=True)
class Secure:
    """The secured broker's addresses and files: ``kafka-local env``'s KEY=VALUE lines, and
    each as an attribute (``ca_file`` is ``KAFKA_CA_FILE``)."""

    env: dict[str, str]

    def __getattr__(self, name: str) -> str:
        return self.env[f"KAFKA_{name.upper()}"]

    def secret(self, name: str) -> str:
        """The content of the secret file ``KAFKA_<NAME>``."""
        return Path(self.env[f"KAFKA_{name.upper()}"]).read_text(encoding="utf-8").strip()

    @property
    def plaintext_by_name(self) -> str:
        """The plaintext listener, reached as localhost (the name the certificate has)."""
        return "localhost:" + self.bootstrap.rsplit(":", 1)[1]


@pytest.fixture(name="secure", scope="session")
def fixture_secure() -> Iterator[Secure]:
    """A broker of our own with the SASL_SSL, SSL (mTLS) and SASL_PLAINTEXT listeners:
    started by the first test that needs it, shared by the rest of the session (a start
    costs about 20 s)."""
    k = LocalKafka(security=True)
    try:
        k.start()
        yield Secure(k.info)
    finally:
        k.close()
