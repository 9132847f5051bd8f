"""`make demo`'s script, end to end: the topic holds exactly what the sample writer wrote."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, Broker

pytestmark = pytest.mark.kafka


def test_demo_ships_every_sample_line(kafka: Broker) -> None:
    """The demo's writer, shipper and broker agree: records in topic == lines written."""
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--duration", "4", "--rate", "3000"],
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
