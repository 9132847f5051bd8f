"""`make demo`'s script, end to end: the topic holds exactly what the sample writer wrote."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT, Broker
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("duration", ["4", "0.1"], ids=["4s", "stop-during-start-up"])
def test_demo_ships_every_sample_line(kafka: Broker, duration: str) -> None:
    """The demo's writer, shipper and broker agree: records in topic == lines written, also
    when the stop comes while the shipper is still starting."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--duration",
            duration,
            "--rate",
            "3000",
        ],
        env={**os.environ, "KAFKA_BOOTSTRAP": kafka.bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    written = int(re.search(r"lines written by the sample writer: (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    records = int(re.search(r"records in topic \S+: (\d+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert written > 0
    assert records == written
    assert "balanced=True" in r.stdout


class Terminal:
    """A pseudo-terminal whose output is collected until its last user closes it."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.output = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every process using the terminal is gone
                return
            if not data:
                return
            self.output += data

    def text(self) -> str:
        """Everything printed on the terminal so far."""
        return self.output.decode(errors="replace")

    def close(self) -> None:
        """Wait for the output to end, then close the terminal."""
        self._reader.join(10)
        os.close(self.master)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_ctrl_c_under_make_is_a_clean_stop(kafka: Broker, tmp_path: Path) -> None:
    """Ctrl-C on the terminal running `make demo` is a clean stop: make exits 0 (not
    "Error 241"), the topic holds every line written, and nothing else is printed (no
    traceback, no watchdog "called when the thread is inactive")."""
    makefile = tmp_path / "Makefile"  # the demo recipe, with this interpreter
    makefile.write_text(f"demo:\n\t{sys.executable} {ROOT / 'scripts' / 'demo.py'} --rate 3000\n")
    term = Terminal()
    try:
        # setsid --ctty: make leads a new session whose controlling terminal is ours, as in
        # a shell; Ctrl-C typed there is SIGINT to the foreground process group.
        proc = subprocess.Popen(
            ["setsid", "--ctty", "make", "--no-print-directory", "-f", str(makefile), "demo"],
            stdin=term.slave,
            stdout=term.slave,
            stderr=term.slave,
            env={**os.environ, "KAFKA_BOOTSTRAP": kafka.bootstrap},
            cwd=ROOT,
        )
        os.close(term.slave)
        try:
            wait_until(
                lambda: "kafka_connected" in term.text(), 60, "the demo running", 0.1, term.text
            )
            os.write(term.master, b"\x03")
            rc = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    finally:
        term.close()
    out = term.text()
    assert rc == 0, out[-3000:]
    written = int(re.search(r"lines written by the sample writer: (\d+)", out).group(1))  # type: ignore[union-attr]
    records = int(re.search(r"records in topic \S+: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert written > 0
    assert records == written
    assert "balanced=True" in out
    for unwanted in ("Error", "Traceback", "InotifyEmitter", "Interrupt"):
        assert unwanted not in out, out[-3000:]
