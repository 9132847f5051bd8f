"""Deployment fixtures: podman with the repository's settings, the image, and readback helpers.

These tests run the image, the pod and the systemd unit for real, as root. They need the
Debian packages `make test-deploy` installs, and the broker of the session fixture.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import wait
from tests.support.readback import read_topic

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "localhost/shipper-base:bookworm"
TEST_IMAGE = "localhost/shipper:deploy-test"

# The stand-in base image is always built from Debian packages here (no registry reachable);
# on a machine that can pull python:3.11-slim-bookworm the Dockerfile's default works too.
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run podman with the repository's containers.conf; fail with its output if ``check``."""
    res = subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        env=PODMAN_ENV,
        timeout=timeout,
        check=False,
    )
    if check and res.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
    return res


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among ``text``'s lines (the daemon's log events)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def last_event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The last event called ``name``; fails the test if there is none."""
    found = [e for e in events if e.get("event") == name]
    assert found, f"no {name} event among {len(events)}: {events[-5:]}"
    return found[-1]


def assert_balanced(done: dict[str, Any]) -> None:
    """The ledger of a ``shutdown_complete`` event adds up."""
    accounted = done["lines_sent"] + done["lines_dropped"] + done["lines_queued"]
    assert done["lines_read"] == accounted, done
    assert done["balanced"] is True, done


#: ``tests.support.wait.wait_until`` polling every 0.1 s: each check here runs podman,
#: systemctl or an HTTP request.
wait_until = functools.partial(wait.wait_until, interval=0.1)


def health(listen: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of GET /health at ``host:port``; (0, {}) if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{listen}/health", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return 0, {}


def records(
    bootstrap: str, topic: str, expect: int | None = None, timeout: float = 30.0
) -> list[bytes]:
    """Every record value in ``topic`` (waiting for ``expect`` records, if given)."""
    parts = read_topic(bootstrap, topic, timeout=timeout, expect=expect)
    return [v for p in sorted(parts) for v in parts[p]]


@pytest.fixture(name="root_user", scope="session", autouse=True)
def fixture_root_user() -> None:
    """Containers, nspawn and chown need root, as on CI."""
    if os.geteuid() != 0:
        pytest.fail("the deploy tests run as root (as CI does): sudo make test-deploy")


@pytest.fixture(name="image", scope="session")
def fixture_image() -> str:
    """The shipper image, built from this tree on the local Debian base (no optional codec)."""
    for tool in ("podman", "debootstrap"):
        assert shutil.which(tool), f"{tool} is missing: make test-deploy installs it"
    res = subprocess.run(
        [str(ROOT / "scripts" / "base-image")],
        capture_output=True,
        text=True,
        env=PODMAN_ENV,
        timeout=900,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # --network host: netavark's bridge needs iptables, which these machines lack.
    podman(
        "build",
        "--quiet",
        "--network",
        "host",
        "--format",
        "docker",
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-t",
        TEST_IMAGE,
        str(ROOT),
        timeout=600,
    )
    return TEST_IMAGE
