"""Many files: the correctness side of bench/'s scale scenario (whose figures the test suite
does not time): a thousand files in one directory and two hundred nested directories under
``**``, with fewer descriptors than files.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import Broker
from tests.integration.conftest import Start, append, base_config, ledger_balances
from tests.integration.test_tailing import audit, numbered, topic_records

pytestmark = pytest.mark.kafka


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # clock ticks of 10 ms


@pytest.mark.slow
def test_a_thousand_files_and_two_hundred_nested_directories(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """1,000 files in one directory and 200 nested directories under ``**`` (max_open_files
    256): every line arrives once at the first start; at idle the rescans open no file again;
    a line appended to a file closed for room, and a new file in a new nested directory,
    arrive once."""
    flat = tmp_path / "logs" / "flat"
    deep = tmp_path / "logs" / "deep"
    flat.mkdir(parents=True)
    files = [flat / f"f{i:04d}.log" for i in range(1000)]
    files += [deep / f"p{i // 20:02d}" / f"q{i:03d}" / "x.log" for i in range(200)]
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        append(f, [numbered(b"m%04d" % i, 0)])
    cfg = base_config(
        kafka,
        topic,
        tmp_path,
        [str(flat / "*.log"), str(deep / "**" / "*.log")],
        tail={"max_open_files": 256},
    )
    t0 = time.monotonic()
    s = start_shipper(cfg)
    led = s.wait_for(lambda led: led["sent"] == 1200, 120, "every file's first line")
    first = time.monotonic() - t0
    opened = led["events"]["files_opened"]
    cpu0, t1 = cpu_seconds(s.proc.pid), time.monotonic()
    time.sleep(3.5)  # three rescans with nothing to read
    idle_cpu = (cpu_seconds(s.proc.pid) - cpu0) / (time.monotonic() - t1)
    led = s.ledger()
    assert led["events"]["files_opened"] == opened, "idle rescans opened files again"
    t2 = time.monotonic()
    append(files[500], [numbered(b"m0500", 1)])  # closed for room long ago
    new = deep / "p99" / "late" / "x.log"
    new.parent.mkdir(parents=True)
    append(new, [numbered(b"late", 0)])
    s.wait_for(lambda led: led["sent"] == 1202, 30, "the appended line and the new file")
    later = time.monotonic() - t2
    print(
        f"[1,200 files] first start {first:.1f} s, files opened {opened}, idle "
        f"{idle_cpu * 100:.1f}% of a core, append and new file {later:.2f} s"
    )
    assert opened >= 1200
    assert led["events"].get("files_closed_for_room", 0) >= 1200 - 256
    led = s.ledger()
    assert ledger_balances(led)
    assert s.stop() == 0
    records = topic_records(kafka, topic, 1202)
    assert len(records) == 1202
    for i in range(len(files)):
        a = audit(records, b"m%04d" % i, 2 if i == 500 else 1)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (i, a.figures())
    assert audit(records, b"late", 1).delivered == 1
