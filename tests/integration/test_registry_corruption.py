"""The registry can never stop the daemon: every kind of damage, a registry far over
``registry.max_entries``, and its directory deleted while running; real processes and the
real broker, every record read back.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, Broker, free_port
from tests.integration.conftest import (
    Start,
    append,
    base_config,
    final_balances,
    ledger_balances,
)
from tests.integration.test_tailing import audit, numbered, topic_records
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


_rng = random.Random(8)
WHOLLY_BAD = {
    "empty list": b"[]",
    "a string": b'"hello"',
    "null": b"null",
    "empty file": b"",
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep nesting in the files": b'{"version":1,"files":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "binary": bytes(_rng.getrandbits(8) for _ in range(4096)),
    "another version": b'{"version":99,"files":[]}',
    "cut short": b'{"version":1,"files":[{"dev":1,',
}


def lines_bytes(tag: bytes, seqs: range) -> int:
    """Bytes the lines ``numbered(tag, i)`` take in a file."""
    return sum(len(numbered(tag, i)) + 1 for i in seqs)


@pytest.mark.parametrize("content", list(WHOLLY_BAD.values()), ids=list(WHOLLY_BAD))
def test_a_registry_that_is_no_registry_is_set_aside(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, content: bytes
) -> None:
    """A registry file that is no registry at all: the daemon starts, keeps a copy, counts
    ``registry_reset``, starts existing files at their end (their bytes counted as
    ``registry_reset`` losses, an upper bound) and ships what comes next, once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"old", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    Path(cfg["registry"]["path"]).write_bytes(content)
    s = start_shipper(cfg)
    led = s.wait_for(lambda led: led["events"].get("files_opened") == 1, 30, "the file opened")
    assert led["events"].get("registry_reset") == 1
    assert led["lost_bytes"].get("registry_reset") == lines_bytes(b"old", range(100))
    code, doc = s.health()
    assert (code, doc["status"]) == (200, "running")
    assert list(tmp_path.glob("registry.json.corrupt-*"))
    append(log, [numbered(b"new", i) for i in range(50)])
    led = s.wait_for(lambda led: led["sent"] == 50, 30, "the new lines")
    assert ledger_balances(led)
    assert s.stop() == 0
    assert final_balances(s.final_ledger())
    records = topic_records(kafka, topic, 50)
    a = audit(records, b"new", 50)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
    assert len(records) == 50
    doc = json.loads(Path(cfg["registry"]["path"]).read_bytes())
    assert doc["version"] == 1


def _bad(field: str, value: str) -> Callable[[str], str]:
    def spoil(entry: str) -> str:
        out, n = re.subn(rf'"{field}":[^,}}]+', f'"{field}":{value}', entry)
        assert n == 1, entry
        return out

    return spoil


BAD_ENTRIES = {
    "offset 1e400": _bad("offset", "1e400"),
    "offset -5": _bad("offset", "-5"),
    "offset a string": _bad("offset", '"12"'),
    "offset true": _bad("offset", "true"),
    "seen NaN": _bad("seen", "NaN"),
    "dev huge": _bad("dev", "9" * 5000),
    "deep nesting": _bad("fp", "[" * 100_000 + "]" * 100_000),
    "not an object": lambda entry: "[1, 2, 3]",
}


@pytest.mark.parametrize("spoil", list(BAD_ENTRIES.values()), ids=list(BAD_ENTRIES))
def test_a_malformed_entry_is_dropped_and_the_good_ones_kept(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, spoil: Callable[[str], str]
) -> None:
    """One malformed entry (placed last, after a good one): it is dropped and counted
    (``registry_entries_dropped``); the good entry's file resumes exactly; the file that
    lost its entry starts at its end (bytes counted) and ships what comes next; no line
    twice."""
    logs = tmp_path / "logs"
    logs.mkdir()
    good, bad = logs / "good.log", logs / "bad.log"
    append(good, [numbered(b"g", i) for i in range(100)])
    append(bad, [numbered(b"b", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 200, 30, "both files")
    assert s.stop() == 0
    reg = Path(cfg["registry"]["path"])
    doc = json.loads(reg.read_bytes())
    entries = {e["path"]: json.dumps(e, separators=(",", ":")) for e in doc["files"]}
    text = ",".join([entries[str(good)], spoil(entries[str(bad)])])
    reg.write_text(f'{{"version":1,"files":[{text}]}}')
    append(good, [numbered(b"g", i) for i in range(100, 150)])
    append(bad, [numbered(b"b", i) for i in range(100, 150)])  # lost: the entry is gone
    s = start_shipper(cfg)
    led = s.wait_for(lambda led: led["sent"] == 50, 30, "good.log resumed")
    assert led["events"].get("registry_entries_dropped") == 1
    assert "registry_reset" not in led["events"]
    assert led["lost_bytes"].get("registry_reset") == lines_bytes(b"b", range(150))
    append(bad, [numbered(b"b", i) for i in range(150, 160)])
    led = s.wait_for(lambda led: led["sent"] == 60, 30, "bad.log's next lines")
    assert ledger_balances(led)
    assert s.stop() == 0
    records = topic_records(kafka, topic, 260)
    g = audit(records, b"g", 150)
    assert (g.duplicates, g.missing, g.foreign) == (0, [], []), g.figures()
    b = audit(records, b"b", 160)
    assert (b.duplicates, b.foreign) == (0, []), b.figures()
    assert b.missing == list(range(100, 150))  # counted above as registry_reset bytes


def vm_hwm_mib(pid: int) -> float:
    """Peak resident memory of process ``pid``, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
def test_a_registry_of_600k_entries_loads_within_its_bound(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A 600,000-entry registry (about 120 MB) with registry.max_entries 100,000: the
    daemon starts within a bounded memory, keeps the 100,000 most recently seen entries
    (the file it reads among them: it resumes exactly) and counts the rest
    (``registry_entries_trimmed``)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"m", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 100, 30, "the file")
    assert s.stop() == 0
    reg = Path(cfg["registry"]["path"])
    (real,) = json.loads(reg.read_bytes())["files"]
    n = 600_000
    with reg.open("w") as f:
        f.write('{"version":1,"files":[')
        for i in range(n):
            fake = {
                "dev": 1,
                "ino": 1_000_000 + i,
                "fp_len": 1024,
                "fp": f"{_rng.getrandbits(96):024x}",
                "path": f"/var/log/app/some/rather/long/path/file-{i:07d}.log",
                "offset": 123_456 + i,
                "exact": 123_456 + i,
                "seen": real["seen"] - 1 - i / 10,  # older, but not forgotten yet
            }
            f.write(json.dumps(fake, separators=(",", ":")) + ",")
        f.write(json.dumps(real) + "]}")
    size_mb = reg.stat().st_size / 1e6
    append(log, [numbered(b"m", i) for i in range(100, 150)])
    t0 = time.monotonic()
    s = start_shipper(cfg, http_timeout=180)
    took = time.monotonic() - t0
    peak = vm_hwm_mib(s.proc.pid)
    led = s.wait_for(lambda led: led["sent"] == 50, 60, "the file resumed")
    print(f"[600k entries] registry={size_mb:.0f} MB start={took:.1f} s peak RSS={peak:.0f} MiB")
    assert peak < 400, f"peak RSS {peak:.0f} MiB"
    assert led["events"].get("registry_entries_trimmed") == n + 1 - 100_000
    assert ledger_balances(led)
    assert s.stop() == 0
    a = audit(topic_records(kafka, topic, 150), b"m", 150)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
    assert len(json.loads(reg.read_bytes())["files"]) == 100_000


def test_registry_directory_deleted_while_running(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """The registry's directory deleted while the daemon runs: the next save creates it
    again with the lock, nothing is dropped, a second process is still refused, and a
    restart resumes exactly."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"d", i) for i in range(100)])
    state = tmp_path / "state"
    cfg = base_config(
        kafka, topic, tmp_path, [str(logs / "*.log")], registry={"path": str(state / "r.json")}
    )
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 100, 30, "the first lines")
    shutil.rmtree(state)
    append(log, [numbered(b"d", i) for i in range(100, 200)])
    append(logs / "new.log", [numbered(b"n", i) for i in range(50)])  # needs a save
    led = s.wait_for(lambda led: led["sent"] == 250, 30, "lines after the deletion")
    wait_until((state / "r.json").exists, 10, "the registry written again")
    assert (state / "r.json.lock").exists()
    assert sum(led["dropped"].values()) == 0, led["dropped"]
    assert s.health()[1]["registry_writable"] is True
    second = {**cfg, "metrics": {"listen": f"127.0.0.1:{free_port()}"}}
    conf = tmp_path / "second.yaml"
    conf.write_text(yaml.safe_dump(second))
    r = subprocess.run(
        [sys.executable, "-m", "shipper", "run", "-c", str(conf)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert r.returncode == 1
    assert str(s.proc.pid) in r.stderr.decode()
    assert s.stop() == 0
    assert final_balances(s.final_ledger())
    s = start_shipper(cfg)
    append(log, [numbered(b"d", i) for i in range(200, 210)])
    s.wait_for(lambda led: led["sent"] == 10, 30, "the lines after the restart")
    time.sleep(1.5)  # a rescan: nothing read again
    assert s.ledger()["read"] == 10
    assert s.stop() == 0
    records = topic_records(kafka, topic, 260)
    for tag, n in ((b"d", 210), (b"n", 50)):
        a = audit(records, tag, n)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (tag, a.figures())
