"""The command line: validate exits 0 or 2 with one line per problem, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from shipper import __version__

GOOD = """
inputs:
  - paths: ["/var/log/app/*.log"]
kafka:
  bootstrap_servers: ["127.0.0.1:9092"]
  topic: logs
"""

BROKEN = {
    "bad_yaml": ("inputs: [\n  - paths: x", "invalid YAML at line"),
    "unknown_key": (GOOD + "colour: blue\n", "colour: unknown key"),
    "wrong_type": (GOOD.replace("topic: logs", "topic: [1, 2]"), "kafka.topic:"),
    "bad_size": (GOOD + "queue:\n  max_bytes: 12 parsecs\n", "queue.max_bytes: invalid size"),
    "bad_duration": (
        GOOD + "shutdown:\n  drain_timeout: soon\n",
        "shutdown.drain_timeout: invalid duration",
    ),
    "missing_env": (
        GOOD.replace("topic: logs", "topic: ${SHIPPER_TEST_UNSET_VAR}"),
        "kafka.topic: environment variable SHIPPER_TEST_UNSET_VAR is not set",
    ),
    "empty_paths": (GOOD.replace('["/var/log/app/*.log"]', "[]"), "inputs[0].paths:"),
    "missing_kafka": ("inputs:\n  - paths: [/x/*.log]\n", "kafka: required"),
    "bad_policy": (GOOD + "queue:\n  when_full: block\n", "queue.when_full:"),
    "relative_path": (GOOD.replace('"/var/log/app/*.log"', '"logs/*.log"'), "must be absolute"),
    "bad_server": (
        GOOD.replace('"127.0.0.1:9092"', '"no-port"'),
        "kafka.bootstrap_servers[0]: 'no-port' is not host:port",
    ),
    "empty_file": ("", "the file is empty"),
    "not_a_mapping": ("- a\n- b\n", "expected a mapping"),
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipper", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    """--version prints the version and exits 0."""
    r = run("--version")
    assert r.returncode == 0
    assert __version__ in r.stdout


def test_validate_good(tmp_path: Path) -> None:
    """A valid config validates with exit 0."""
    f = tmp_path / "ok.yaml"
    f.write_text(GOOD)
    r = run("validate", "-c", str(f))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_validate_broken(tmp_path: Path, name: str) -> None:
    """Each broken config exits 2 with a one-line message naming the key path."""
    text, expect = BROKEN[name]
    f = tmp_path / f"{name}.yaml"
    f.write_text(text)
    r = run("validate", "-c", str(f))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert expect in r.stderr, r.stderr
    for line in r.stderr.strip().splitlines():
        assert line.startswith("config error: ")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A config path that does not exist exits 2 with a clear message."""
    r = run("validate", "-c", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2
    assert "cannot read" in r.stderr


def test_python_m_shipper_matches_console_script() -> None:
    """``python -m shipper --help`` works like the console script."""
    r = run("--help")
    assert r.returncode == 0
    assert "validate" in r.stdout


def test_exit_code_3_is_in_the_help() -> None:
    """The help of shipper and of validate say what exit 3 means."""
    assert "3 config valid but validate --connect" in " ".join(run("--help").stdout.split())
    text = " ".join(run("validate", "--help").stdout.split())
    assert "--connect" in text
    assert "exit 3 when the config is valid but that check fails" in text


def test_validate_connect_exits_3_when_kafka_is_not_there(tmp_path: Path) -> None:
    """A valid config whose broker cannot be reached: exit 3, and the line says why."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nothing listens there
    f = tmp_path / "ok.yaml"
    f.write_text(GOOD.replace("127.0.0.1:9092", f"127.0.0.1:{port}"))
    r = run("validate", "-c", str(f), "--connect")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"127.0.0.1:{port} (bootstrap): FAILED connection_refused" in r.stdout
    assert r.stdout.splitlines()[0] == f"{f}: ok"
    assert r.stdout.splitlines()[-1] == "kafka: FAILED: no bootstrap server could be used"
    assert "Traceback" not in r.stderr


def test_validate_connect_does_not_connect_when_the_config_is_invalid(tmp_path: Path) -> None:
    """An invalid config exits 2 before any connection is tried."""
    f = tmp_path / "bad.yaml"
    f.write_text(GOOD + "colour: blue\n")
    r = run("validate", "-c", str(f), "--connect")
    assert r.returncode == 2
    assert "kafka:" not in r.stdout
