"""The systemd unit, for real: a Debian root booted with systemd as PID 1 under systemd-nspawn.

The shipper is installed inside by running the install commands of the unit's header, as
written, so the header stays true. The container shares the host's network: the service
reaches the test broker on the loopback, and the test reaches its /health.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
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
    ROOT,
    assert_balanced,
    health,
    json_lines,
    last_event,
    records,
    wait_until,
)

pytestmark = [pytest.mark.deploy, pytest.mark.kafka]

UNIT = ROOT / "systemd" / "shipper.service"
KIT = "/srv/shipper-install"  # where scripts/systemd-root puts the wheel, unit and config
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_EXPOSURE = 1.5
DROP_INS = "/etc/systemd/system/shipper.service.d"


def header_install_commands(unit_text: str) -> str:
    """The shell commands of the header's install block (the first indented block)."""
    header = unit_text[: unit_text.index("[Unit]")]
    lines: list[str] = []
    for line in header.splitlines():
        if line.startswith("#   "):
            lines.append(line[4:])
        elif lines:  # the block ends at the first line that is not a command
            break
    assert lines, "no install commands in the unit's header"
    return "\n".join(lines)


class Machine:
    """A booted systemd-nspawn container; commands run inside through nsenter."""

    def __init__(self, root: Path, console: Path) -> None:
        self.root = root
        self._console = console.open("wb")
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "-b",
                "-D",
                str(root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
        )
        try:
            self.pid = self._find_init()
            self._wait_booted()
        except BaseException:
            self.poweroff()  # never leave a half-booted container behind
            raise

    def _find_init(self, timeout: float = 30.0) -> int:
        """The container's PID 1 as the host sees it: nspawn's child once it is systemd."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"systemd-nspawn exited:\n{self.console()}"
            for task in Path(f"/proc/{self.proc.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    try:
                        if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                            return int(child)
                    except OSError:
                        continue
            time.sleep(0.05)
        raise AssertionError(f"systemd did not start in the container:\n{self.console()}")

    def _wait_booted(self, timeout: float = 90.0) -> None:
        """Wait until systemd inside has finished booting (its bus may not be up at first)."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=timeout
            )
            if state.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise AssertionError(f"the container did not boot: {state}\n{self.console()}")

    def console(self) -> str:
        """What the container printed on its console."""
        self._console.flush()
        return Path(self._console.name).read_text(errors="replace")[-3000:]

    def run(
        self, *cmd: str, check: bool = True, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside, as root, with a clean environment."""
        envs = [f"{k}={v}" for k, v in {"PATH": PATH, **(env or {})}.items()]
        res = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid),
                "-m",
                "-u",
                "-i",
                "-p",
                "-n",
                "--",
                "env",
                "-i",
                *envs,
                *cmd,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}{res.stderr}")
        return res

    def show(self, *props: str) -> dict[str, str]:
        """Properties of shipper.service (``systemctl show``)."""
        out = self.run("systemctl", "show", "shipper", *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self) -> int:
        """The service's main process, as the container sees it (0 when none)."""
        return int(self.show("MainPID")["MainPID"])

    def journal(self, invocation: str) -> list[dict[str, Any]]:
        """The log events of one run of the service."""
        out = self.run(
            "journalctl", f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat", "--no-pager"
        ).stdout
        return json_lines(out)

    def cursor(self) -> str:
        """The journal's current position, to read only what comes after it."""
        out = self.run("journalctl", "-n", "1", "--show-cursor", "--no-pager").stdout
        return out.rsplit("-- cursor: ", 1)[1].strip()

    def poweroff(self) -> None:
        """Shut the container down (nspawn turns SIGTERM into a poweroff), then reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._console.close()


class Service:
    """What a test knows about the running shipper.service: its config, topic and log file."""

    def __init__(self, machine: Machine, broker: Broker, listen: str) -> None:
        self.machine = machine
        self.broker = broker
        self.listen = listen
        self.topic = f"t-{uuid.uuid4().hex[:12]}"
        self.log = machine.root / "var/log/app" / f"{self.topic}.log"

    def config(self, topic: str, **over: Any) -> dict[str, Any]:
        """A config for ``topic`` reading /var/log/app/*.log, with ``over`` merged in."""
        cfg: dict[str, Any] = {
            "inputs": [{"paths": ["/var/log/app/*.log"], "start_at": "beginning"}],
            "tail": {"poll_interval": "100ms", "rescan_interval": "1s"},
            "kafka": {"bootstrap_servers": [self.broker.bootstrap], "topic": topic},
            "metrics": {"listen": self.listen},
            "log": {"stats_interval": "5s"},
        }
        cfg.update(over)
        return cfg

    def write_config(self, cfg: dict[str, Any] | str) -> None:
        """Replace /etc/shipper/shipper.yaml (keeping its owner and mode)."""
        text = cfg if isinstance(cfg, str) else yaml.safe_dump(cfg)
        (self.machine.root / "etc/shipper/shipper.yaml").write_text(text)

    def append(self, lines: list[bytes], path: Path | None = None) -> None:
        """Append lines to the service's log file (or ``path``)."""
        target = path or self.log
        with target.open("ab") as f:
            f.write(b"".join(x + b"\n" for x in lines))
        target.chmod(0o644)

    def wait_running(self) -> None:
        """Wait until the service is active and /health answers 200."""
        wait_until(
            lambda: (
                self.machine.show("ActiveState")["ActiveState"] == "active"
                and health(self.listen)[0] == 200
            ),
            30,
            "shipper.service running",
        )


@pytest.fixture(name="machine", scope="module")
def fixture_machine(tmp_path_factory: pytest.TempPathFactory, kafka: Broker) -> Iterator[Machine]:
    """A booted Debian with the shipper installed by the unit header's commands."""
    assert shutil.which("systemd-nspawn"), "systemd-nspawn is missing (Debian: systemd-container)"
    work = tmp_path_factory.mktemp("nspawn")
    root = work / "root"
    res = subprocess.run(
        [str(ROOT / "scripts" / "systemd-root"), str(root)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    logs = root / "var/log/app"
    logs.mkdir()
    os.chown(logs, 0, 4)  # root:adm 0750, as Debian's /var/log: the unit's adm group reads it
    logs.chmod(0o750)
    (root / KIT.lstrip("/") / "shipper.yaml").write_text(
        yaml.safe_dump(
            {
                "inputs": [{"paths": ["/var/log/app/*.log"]}],
                "kafka": {"bootstrap_servers": [kafka.bootstrap], "topic": "install-check"},
                "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            }
        )
    )
    machine = Machine(root, work / "console.log")
    try:
        script = header_install_commands(UNIT.read_text())
        install = machine.run(
            "sh",
            "-exc",
            f"cd {KIT}\n{script}",
            env={
                "PIP_NO_INDEX": "1",
                "PIP_FIND_LINKS": f"{KIT}/wheels",
                "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            },
            check=False,
            timeout=300,
        )
        assert install.returncode == 0, f"header install failed:\n{install.stdout}{install.stderr}"
        yield machine
    finally:
        machine.poweroff()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(name="service")
def fixture_service(machine: Machine, kafka: Broker) -> Service:
    """shipper.service restarted on a fresh topic, with no failure or rate limit left over."""
    svc = Service(machine, kafka, f"127.0.0.1:{free_port()}")
    svc.write_config(svc.config(svc.topic))
    machine.run("systemctl", "reset-failed", "shipper", check=False)
    machine.run("systemctl", "restart", "shipper")
    svc.wait_running()
    return svc


def test_header_install_enables_and_starts_the_service(machine: Machine) -> None:
    """The header's commands, run as written, leave an enabled, running service."""
    assert machine.run("systemctl", "is-enabled", "shipper").stdout.strip() == "enabled"
    assert machine.run("systemctl", "is-active", "shipper", check=False).stdout.strip() == "active"
    link = machine.run("readlink", "-f", "/usr/local/bin/shipper").stdout.strip()
    assert link.startswith("/opt/shipper/"), link
    assert machine.run("id", "-u", "shipper").stdout.strip() == "10001"


def test_active_only_after_ready(machine: Machine, service: Service) -> None:
    """Type=notify: the unit is `activating` while the process starts, `active` once READY=1
    was sent, and by then /health answers."""
    machine.run("systemctl", "restart", "--no-block", "shipper")
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        props = machine.show("ActiveState", "MainPID")
        if props["ActiveState"] == "active":
            assert health(service.listen)[0] == 200, "active before /health answered"
            break
        if int(props["MainPID"]):
            seen.append(props["ActiveState"])
        time.sleep(0.02)
    else:
        pytest.fail(f"never active; states seen with a main process: {seen}")
    assert "activating" in seen, seen


def test_lines_arrive_at_the_broker(service: Service) -> None:
    """Lines written to /var/log/app reach the broker on the host's loopback."""
    lines = [f"systemd line {i}".encode() for i in range(300)]
    service.append(lines)
    assert records(service.broker.bootstrap, service.topic, expect=len(lines)) == lines


def test_reload_applies_a_changed_config(machine: Machine, service: Service) -> None:
    """`systemctl reload` (SIGHUP) with a new topic in the config: the same process goes on,
    and new lines go to the new topic. Needs the daemon's SIGHUP reload."""
    before = [b"before reload %d" % i for i in range(20)]
    service.append(before)
    assert records(service.broker.bootstrap, service.topic, expect=len(before)) == before
    pid = machine.main_pid()
    new_topic = f"{service.topic}-reloaded"
    service.write_config(service.config(new_topic))
    machine.run("systemctl", "reload", "shipper")

    # The reload is asynchronous (ExecReload only sends the signal): probe until a line
    # lands in the new topic, then check that a whole batch goes there and only there.
    probes = 0

    def switched() -> bool:
        nonlocal probes
        assert machine.main_pid() == pid, "the reload replaced the process"
        service.append([b"probe %d" % probes])
        probes += 1
        return bool(records(service.broker.bootstrap, new_topic, timeout=0.5))

    wait_until(switched, 30, "a line in the new topic", interval=0.2)
    after = [b"after reload %d" % i for i in range(50)]
    service.append(after)
    got = records(service.broker.bootstrap, new_topic, expect=probes + len(after))
    assert got[-len(after) :] == after
    old = records(service.broker.bootstrap, service.topic)
    assert not set(after) & set(old)
    assert machine.main_pid() == pid
    assert machine.show("ActiveState")["ActiveState"] == "active"


def test_sighup_does_not_end_the_service(machine: Machine, service: Service) -> None:
    """`systemctl kill -s HUP` leaves the same process running (systemd would take a death
    by SIGHUP for a clean exit and not restart it)."""
    pid = machine.main_pid()
    restarts = machine.show("NRestarts")["NRestarts"]
    machine.run("systemctl", "kill", "-s", "HUP", "shipper")
    time.sleep(3)
    props = machine.show("ActiveState", "MainPID", "NRestarts")
    assert props == {"ActiveState": "active", "MainPID": str(pid), "NRestarts": restarts}
    lines = [b"after SIGHUP %d" % i for i in range(10)]
    service.append(lines)
    assert records(service.broker.bootstrap, service.topic, expect=len(lines)) == lines


def test_stop_under_a_writer_exits_0_with_a_balanced_ledger(
    machine: Machine, service: Service
) -> None:
    """`systemctl stop` while lines pour in: exit status 0, and the last shutdown_complete
    line in the journal has a balanced ledger that matches the topic."""
    invocation = machine.show("InvocationID")["InvocationID"]
    service.log.touch(mode=0o644)
    stop = threading.Event()

    def writer() -> None:
        i = 0
        with service.log.open("ab", buffering=0) as f:
            while not stop.is_set():
                f.write(b"".join(b"busy line %d\n" % (i + k) for k in range(50)))
                i += 50
                time.sleep(0.005)

    t = threading.Thread(target=writer, name="busy-writer")
    t.start()
    try:
        time.sleep(1.5)
        machine.run("systemctl", "stop", "shipper", timeout=60)
    finally:
        stop.set()
        t.join()
    props = machine.show("ExecMainStatus", "ExecMainCode", "Result", "ActiveState")
    assert props["ExecMainStatus"] == "0", props
    assert props["Result"] == "success", props
    assert props["ActiveState"] == "inactive", props
    done = last_event(machine.journal(invocation), "shutdown_complete")
    assert_balanced(done)
    assert done["lines_read"] > 0
    got = records(service.broker.bootstrap, service.topic, expect=done["lines_sent"])
    assert len(got) == done["lines_sent"]


def test_invalid_config_fails_without_a_restart_loop(machine: Machine, service: Service) -> None:
    """A config with a misspelt key: exit 2, the unit fails and is not restarted."""
    cfg = service.config(service.topic)
    cfg["kafka"]["bootstrap_server"] = cfg["kafka"].pop("bootstrap_servers")
    service.write_config(cfg)
    res = machine.run("systemctl", "restart", "shipper", check=False)
    assert res.returncode != 0
    time.sleep(5)  # past RestartSec=2: a restart would have happened by now
    props = machine.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props == {
        "ActiveState": "failed",
        "Result": "exit-code",
        "ExecMainStatus": "2",
        "NRestarts": "0",
    }, props


def test_watchdog_restarts_a_hung_daemon(machine: Machine, service: Service) -> None:
    """With WatchdogSec=3s the daemon keeps running (it sends WATCHDOG=1); once SIGSTOPped it
    misses the deadline and systemd restarts it. Needs the daemon's WATCHDOG=1."""
    assert re.search(r"^WatchdogSec=\d+s?$", UNIT.read_text(), re.M), "the unit sets no WatchdogSec"
    drop_in = machine.root / DROP_INS.lstrip("/") / "zz-test-watchdog.conf"
    drop_in.parent.mkdir(exist_ok=True)
    drop_in.write_text("[Service]\nWatchdogSec=3s\n")
    try:
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", "shipper")
        pid = machine.main_pid()
        time.sleep(7)  # two watchdog periods
        props = machine.show("ActiveState", "MainPID", "NRestarts")
        assert props == {"ActiveState": "active", "MainPID": str(pid), "NRestarts": "0"}, (
            "the daemon did not keep the watchdog fed",
            props,
        )
        cursor = machine.cursor()
        machine.run("kill", "-STOP", str(pid))
        wait_until(
            lambda: (
                machine.main_pid() not in (0, pid)
                and machine.show("ActiveState")["ActiveState"] == "active"
            ),
            30,
            "a restart after the watchdog timeout",
            interval=0.5,
        )
        assert int(machine.show("NRestarts")["NRestarts"]) >= 1
        log = machine.run(
            "journalctl", "-u", "shipper", f"--after-cursor={cursor}", "--no-pager", "-o", "cat"
        ).stdout
        assert "Watchdog timeout" in log
        assert "Failed with result 'watchdog'" in log
    finally:
        drop_in.unlink()
        machine.run("systemctl", "daemon-reload")


def test_load_credential_reaches_the_service_user(machine: Machine, service: Service) -> None:
    """The unit's commented LoadCredential= line, enabled in a drop-in, puts the secret under
    $CREDENTIALS_DIRECTORY, readable by user shipper and no other."""
    m = re.search(r"^#(LoadCredential=kafka-password:(\S+))$", UNIT.read_text(), re.M)
    assert m, "the unit shows no LoadCredential= example"
    setting, source = m.groups()
    secret = f"pw-{uuid.uuid4().hex}"
    machine.run("sh", "-c", f"umask 077; printf '%s' '{secret}' >{source}")
    drop_in = machine.root / DROP_INS.lstrip("/") / "zz-test-credential.conf"
    drop_in.parent.mkdir(exist_ok=True)
    drop_in.write_text(f"[Service]\n{setting}\n")
    try:
        machine.run("systemctl", "daemon-reload")
        machine.run("systemctl", "restart", "shipper")
        service.wait_running()
        pid = machine.main_pid()
        environ = machine.run("cat", f"/proc/{pid}/environ").stdout.split("\0")
        cred_dir = next(
            e.split("=", 1)[1] for e in environ if e.startswith("CREDENTIALS_DIRECTORY=")
        )
        path = f"{cred_dir}/kafka-password"
        as_shipper = machine.run(
            "setpriv", "--reuid=shipper", "--regid=shipper", "--clear-groups", "cat", path
        )
        assert as_shipper.stdout == secret
        as_nobody = machine.run(
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "cat",
            path,
            check=False,
        )
        assert as_nobody.returncode != 0
    finally:
        drop_in.unlink()
        machine.run("systemctl", "daemon-reload")
        machine.run("rm", "-f", source)


def test_security_exposure_is_low(machine: Machine) -> None:
    """`systemd-analyze security shipper` on the booted system rates the unit <= 1.5."""
    out = machine.run("systemd-analyze", "security", "shipper", "--no-pager").stdout
    m = re.search(r"Overall exposure level for shipper\.service: (\d+(?:\.\d+)?)", out)
    assert m, out
    assert float(m.group(1)) <= MAX_EXPOSURE, out
