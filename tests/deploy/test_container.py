"""The image, run as a user would: read-only root, host network, logs mounted read-only."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Broker, free_port
from tests.deploy.conftest import (
    assert_balanced,
    health,
    json_lines,
    last_event,
    podman,
    records,
    wait_until,
)

pytestmark = [pytest.mark.deploy, pytest.mark.kafka]

ADM_GID = 4  # group adm on Debian, in the image as on the host


class Container:
    """One ``podman run -d`` of the image, configured for the test broker."""

    def __init__(
        self,
        image: str,
        workdir: Path,
        broker: Broker,
        topic: str,
        logs: Path,
        *,
        extra: list[str] | None = None,
    ) -> None:
        self.name = f"shipper-test-{uuid.uuid4().hex[:10]}"
        self.listen = f"127.0.0.1:{free_port()}"
        self.state = f"{self.name}-state"
        conf = workdir / f"{self.name}.yaml"
        conf.write_text(
            yaml.safe_dump(
                {
                    "inputs": [{"paths": ["/var/log/app/*.log"], "start_at": "beginning"}],
                    "tail": {"poll_interval": "100ms", "rescan_interval": "1s"},
                    "kafka": {"bootstrap_servers": [broker.bootstrap], "topic": topic},
                    "metrics": {"listen": "${SHIPPER_METRICS_LISTEN:-127.0.0.1:9108}"},
                    "log": {"stats_interval": "5s"},
                }
            )
        )
        conf.chmod(0o644)
        try:
            podman("volume", "create", self.state)
            podman(
                "run",
                "--detach",
                "--name",
                self.name,
                "--read-only",
                "--network",
                "host",
                "--volume",
                f"{logs}:/var/log/app:ro",
                "--volume",
                f"{self.state}:/var/lib/shipper",
                "--volume",
                f"{conf}:/etc/shipper/shipper.yaml:ro",
                "--env",
                f"SHIPPER_METRICS_LISTEN={self.listen}",
                *(extra or []),
                image,
            )
        except BaseException:  # pytest.fail raises a BaseException
            self.remove()
            raise

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until /health answers 200 on the moved port."""

        def up() -> bool:
            if self.inspect("{{.State.Running}}") != "true":
                pytest.fail(f"container exited:\n{self.logs()}")
            return health(self.listen)[0] == 200

        wait_until(up, timeout, f"/health on {self.listen}")

    def inspect(self, fmt: str) -> str:
        """One field of ``podman inspect``."""
        return podman("inspect", "--format", fmt, self.name).stdout.strip()

    def logs(self) -> str:
        """What the daemon printed (its JSON log)."""
        res = podman("logs", self.name)
        return res.stdout + res.stderr

    def events(self) -> list[dict[str, Any]]:
        """The daemon's log events."""
        return json_lines(self.logs())

    def remove(self) -> None:
        """Remove the container and its state volume, whatever state they are in."""
        podman("rm", "--force", "--volumes", "--time", "0", self.name, check=False)
        podman("volume", "rm", "--force", self.state, check=False)


@pytest.fixture(name="logs")
def fixture_logs(tmp_path: Path) -> Path:
    """A log directory any user may list, as /var/log/app usually is."""
    d = tmp_path / "logs"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    return d


@pytest.fixture(name="run_container")
def fixture_run_container(image: str, kafka: Broker, tmp_path: Path) -> Iterator[Any]:
    """Factory for containers of the image, all removed after the test."""
    started: list[Container] = []

    def run(topic: str, logs: Path, extra: list[str] | None = None) -> Container:
        c = Container(image, tmp_path, kafka, topic, logs, extra=extra)
        started.append(c)
        return c

    yield run
    for c in started:
        c.remove()


def write_lines(path: Path, prefix: str, n: int) -> list[bytes]:
    """Append ``n`` numbered lines and return them (without newlines)."""
    lines = [f"{prefix} {i}".encode() for i in range(n)]
    with path.open("ab") as f:
        f.write(b"".join(x + b"\n" for x in lines))
    path.chmod(0o644)
    return lines


def test_image_keeps_its_healthcheck_and_user(image: str) -> None:
    """The docker-format image carries the HEALTHCHECK (`shipper health`) and runs as 10001."""
    out = podman(
        "image", "inspect", "--format", "{{json .Config.Healthcheck}}|{{.Config.User}}", image
    ).stdout.strip()
    check, user = out.split("|")
    test = json.loads(check)["Test"]
    assert test[:3] == ["CMD", "shipper", "health"], test
    assert user == "10001:10001"


def test_lines_reach_the_broker(run_container: Any, logs: Path, kafka: Broker, topic: str) -> None:
    """Lines written to the mounted log dir arrive at the broker, byte for byte, in order."""
    c = run_container(topic, logs)
    c.wait_healthy()
    sent = write_lines(logs / "app.log", "container line", 500)
    got = records(kafka.bootstrap, topic, expect=len(sent))
    assert got == sent


def test_healthcheck_follows_the_moved_port(run_container: Any, logs: Path, topic: str) -> None:
    """`podman healthcheck run` passes with the metrics port moved by SHIPPER_METRICS_LISTEN.

    Needs the `shipper health` subcommand (exit 0 when /health answers 200).
    """
    c = run_container(topic, logs)
    c.wait_healthy()
    assert not c.listen.endswith(":9108")
    res = podman("healthcheck", "run", c.name, check=False)
    if res.returncode != 0:  # podman only says "unhealthy": show what the check printed
        check = podman(
            "exec", c.name, "shipper", "health", "-c", "/etc/shipper/shipper.yaml", check=False
        )
        pytest.fail(
            f"{res.stdout}{res.stderr}shipper health exited {check.returncode}: "
            f"{check.stdout}{check.stderr}"
        )


def test_stop_under_a_writer_exits_0_with_a_balanced_ledger(
    run_container: Any, logs: Path, kafka: Broker, topic: str
) -> None:
    """`podman stop -t 30` while lines pour in: exit 0, and the final ledger adds up."""
    c = run_container(topic, logs)
    c.wait_healthy()
    path = logs / "busy.log"
    path.touch(mode=0o644)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        with path.open("ab", buffering=0) as f:
            while not stop.is_set():
                f.write(b"".join(b"busy line %d\n" % (i + k) for k in range(50)))
                i += 50
                time.sleep(0.005)

    t = threading.Thread(target=writer, name="busy-writer")
    t.start()
    try:
        time.sleep(1.5)
        started = time.monotonic()
        podman("stop", "--time", "30", c.name, timeout=60)
        took = time.monotonic() - started
    finally:
        stop.set()
        t.join()
    assert c.inspect("{{.State.ExitCode}}") == "0", c.logs()[-3000:]
    assert took < 30, f"podman stop took {took:.1f}s: the daemon was killed, not stopped"
    done = last_event(c.events(), "shutdown_complete")
    assert_balanced(done)
    assert done["lines_read"] > 0
    # With a healthy broker what was counted as sent is what the topic holds.
    assert len(records(kafka.bootstrap, topic, expect=done["lines_sent"])) == done["lines_sent"]


@pytest.fixture(name="adm_logs")
def fixture_adm_logs(tmp_path: Path) -> Path:
    """A log directory owned root:adm 0750, as /var/log is on Debian, with a line in it."""
    d = tmp_path / "adm-logs"
    d.mkdir()
    write_lines(d / "app.log", "adm line", 3)
    os.chown(d, 0, ADM_GID)
    d.chmod(0o750)
    return d


def test_unlistable_log_dir_is_reported(run_container: Any, adm_logs: Path, topic: str) -> None:
    """A log dir the container user cannot list: a `directory_unreadable` warning and
    /health `degraded`, instead of silence.

    Needs the daemon's unreadable-directory reporting.
    """
    c = run_container(topic, adm_logs)
    c.wait_healthy()

    def reported() -> bool:
        return any(e.get("event") == "directory_unreadable" for e in c.events())

    wait_until(reported, 15, "a directory_unreadable event", interval=0.5)
    event = next(e for e in c.events() if e.get("event") == "directory_unreadable")
    assert "/var/log/app" in json.dumps(event), event
    status, body = health(c.listen)
    assert (status, body.get("status")) == (200, "degraded"), body


def test_group_add_gives_the_container_user_access(
    run_container: Any, adm_logs: Path, kafka: Broker, topic: str
) -> None:
    """`--group-add` with the directory's gid lets the shipper list and ship it."""
    gid = adm_logs.stat().st_gid
    c = run_container(topic, adm_logs, ["--group-add", str(gid)])
    c.wait_healthy()
    sent = [b"adm line 0", b"adm line 1", b"adm line 2"]
    sent += write_lines(adm_logs / "app.log", "after group-add", 10)
    assert records(kafka.bootstrap, topic, expect=len(sent)) == sent
    assert not [e for e in c.events() if e.get("event") == "directory_unreadable"]
    assert health(c.listen)[1].get("status") == "running"
