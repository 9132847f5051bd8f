"""Hostile file systems against the real broker: FIFOs and other non-files under log names,
directories the daemon may not list, inotify limits, long lines across a stop,
copytruncate while stopped, files that only look like copies, files deleted unread.

Every test reads the topic back: no line twice, and every missing byte counted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import Broker, free_port
from tests.integration.conftest import (
    Shipper,
    Start,
    append,
    base_config,
    final_balances,
    ledger_balances,
)
from tests.integration.test_tailing import NO_DAC, audit, numbered, topic_records
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


def health_doc(s: Shipper) -> dict[str, object]:
    code, doc = s.health()
    doc["code"] = code
    return doc


# -- only regular files -------------------------------------------------------------------------
def test_fifo_socket_device_and_directory_are_never_read(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A FIFO renamed onto a log's name, a socket, a device and a directory matching the
    glob are counted once each (``not_regular_file``) and never read (a FIFO would block
    the reader); the log's lines arrive once, and once a regular file is back under the
    name it is read."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"f", i) for i in range(100)])
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(logs / "*.log")]))
    s.wait_for(lambda led: led["sent"] == 100, 30, "the log")
    fifo = logs / "swap.fifo"
    os.mkfifo(fifo)
    os.rename(fifo, log)  # a FIFO under the log's name; nobody writes to it
    odd = 2
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(logs / "sock.log"))
        (logs / "dir.log").mkdir()
        try:
            os.mknod(logs / "null.log", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            odd += 1
        except PermissionError:  # no CAP_MKNOD here: the other kinds still count
            pass
        append(logs / "other.log", [numbered(b"o", i) for i in range(50)])
        s.wait_for(
            lambda led: led["sent"] == 150 and led["events"].get("not_regular_file", 0) >= odd + 1,
            30,
            "other.log shipped and the odd files counted",
        )
        time.sleep(2.5)  # two rescans: nothing is counted twice, nothing read
        led = s.ledger()
        assert led["events"]["not_regular_file"] == odd + 1, led["events"]
        assert led["read"] == 150
        assert health_doc(s)["status"] == "running"
        os.unlink(log)
        append(log, [numbered(b"f", i) for i in range(100, 200)])
        led = s.wait_for(lambda led: led["sent"] == 250, 30, "the log back as a file")
    assert ledger_balances(led)
    records = topic_records(kafka, topic, 250)
    for tag, n in ((b"f", 200), (b"o", 50)):
        a = audit(records, tag, n)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (tag, a.figures())
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


# -- a directory the daemon may not list ----------------------------------------------------------
def test_directory_the_daemon_cannot_list(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A log directory the daemon may not list (owned by another user, 0750) is logged once,
    counted once (``directory_unreadable``) and makes /health say degraded, naming it; the
    other directory ships; once it is readable its lines arrive and health recovers."""
    if os.geteuid() != 0:
        prefix: list[str] = []
    elif shutil.which("setpriv"):
        prefix = NO_DAC
    else:
        pytest.skip("root without setpriv cannot be denied a directory")
    logs = tmp_path / "logs"
    (logs / "open").mkdir(parents=True)
    secret = logs / "secret"
    secret.mkdir()
    append(logs / "open" / "a.log", [numbered(b"a", i) for i in range(100)])
    append(secret / "b.log", [numbered(b"b", i) for i in range(100)])
    if os.geteuid() == 0:
        os.chown(secret, 54321, 54321)  # root:adm 0750 with the daemon not in adm
        secret.chmod(0o750)
    else:
        secret.chmod(0o000)
    try:
        cfg = base_config(
            kafka, topic, tmp_path, [str(logs / "open" / "*.log"), str(secret / "*.log")]
        )
        s = start_shipper(cfg, prefix=prefix)
        led = s.wait_for(
            lambda led: led["sent"] == 100 and led["events"].get("directory_unreadable"),
            30,
            "the readable directory shipped, the other counted",
        )
        doc = health_doc(s)
        assert doc["code"] == 200
        assert doc["status"] == "degraded"
        assert doc["problems"]["directory_unreadable"] == [str(secret)]  # type: ignore[index]
        time.sleep(2.5)  # two rescans: still counted and logged once
        assert s.ledger()["events"]["directory_unreadable"] == 1
        logged = [e for e in s.events() if e.get("event") == "directory_unreadable"]
        assert len(logged) == 1
        assert logged[0]["directory"] == str(secret)
    finally:
        os.chown(secret, os.geteuid(), os.getegid())
        secret.chmod(0o755)
    led = s.wait_for(lambda led: led["sent"] == 200, 30, "the directory once readable")
    wait_until(lambda: health_doc(s)["status"] == "running", 30, "health recovers")
    assert ledger_balances(led)
    records = topic_records(kafka, topic, 200)
    for tag in (b"a", b"b"):
        a = audit(records, tag, 100)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (tag, a.figures())
    assert s.stop() == 0


# -- inotify limits -----------------------------------------------------------------------------
def no_inotify(limit: str) -> list[str]:
    """A command prefix: run in a user namespace whose inotify ``limit`` is 0, or skip."""
    prefix = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        f'echo 0 > /proc/sys/user/{limit} && exec "$@"',
        "sh",
    ]
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    if probe.returncode:
        pytest.skip(f"cannot lower {limit} in a user namespace: {probe.stderr.decode()}")
    return prefix


@pytest.mark.parametrize("limit", ["max_inotify_instances", "max_inotify_watches"])
def test_inotify_limit_reached_falls_back_to_polling(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, limit: str
) -> None:
    """With no inotify instance (or watch) to be had, the daemon starts anyway, counts
    ``watch_failed``, says degraded on /health, and ships by polling: existing lines,
    appended lines, new files and files in new directories, each once."""
    prefix = no_inotify(limit)
    logs = tmp_path / "logs"
    (logs / "sub").mkdir(parents=True)
    log = logs / "app.log"
    append(log, [numbered(b"e", i) for i in range(100)])
    s = start_shipper(
        base_config(kafka, topic, tmp_path, [str(logs / "**" / "*.log")]), prefix=prefix
    )
    led = s.wait_for(
        lambda led: led["sent"] == 100 and led["events"].get("watch_failed"), 30, "polling"
    )
    doc = health_doc(s)
    assert (doc["code"], doc["status"]) == (200, "degraded")
    assert doc["problems"]["watch_failed"] == [str(logs)]  # type: ignore[index]
    append(log, [numbered(b"e", i) for i in range(100, 200)])
    append(logs / "sub" / "new.log", [numbered(b"n", i) for i in range(50)])
    (logs / "later" / "deeper").mkdir(parents=True)
    append(logs / "later" / "deeper" / "x.log", [numbered(b"x", i) for i in range(50)])
    t0 = time.monotonic()
    led = s.wait_for(lambda led: led["sent"] == 300, 30, "appended lines and new files")
    print(f"[{limit} 0] shipped by polling in {time.monotonic() - t0:.2f} s")
    assert ledger_balances(led)
    records = topic_records(kafka, topic, 300)
    for tag, n in ((b"e", 200), (b"n", 50), (b"x", 50)):
        a = audit(records, tag, n)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (tag, a.figures())
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


# -- a long line across a clean stop ------------------------------------------------------------
@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_long_line_skip_survives_a_clean_stop(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, policy: str
) -> None:
    """A line over max_line_bytes is being skipped when the daemon stops cleanly; after the
    restart the rest of it is skipped too: never shipped as a record of its own."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_bytes(b"before\n" + b"L" * 5000)
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    cfg["inputs"][0].update(max_line_bytes="1KiB", long_lines=policy)
    s = start_shipper(cfg)
    if policy == "truncate":
        s.wait_for(lambda led: led["sent"] == 2, 30, "the line and the long line's head")
    else:
        s.wait_for(lambda led: led["dropped"].get("line_too_long") == 1, 30, "the drop")
    assert s.stop() == 0
    append(log, b"L" * 3000 + b"\nafter\n")
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 1, 30, "the next line")
    time.sleep(1.0)  # anything shipped wrongly has had the time to arrive
    assert s.ledger()["read"] == 1
    records = topic_records(kafka, topic, 2)
    head = [b"L" * 1024] if policy == "truncate" else []
    assert records == [b"before", *head, b"after"]
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


# -- copytruncate while stopped -------------------------------------------------------------------
def test_copytruncate_while_stopped_reads_the_copy_once(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """logrotate's copytruncate runs while the daemon is stopped: the copy (a new inode
    starting like the file we knew) is read from where we stopped, the truncated file from
    its beginning: every line once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"c", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "app.log*")])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 100, 30, "the first lines")
    assert s.stop() == 0
    append(log, [numbered(b"c", i) for i in range(100, 120)])  # written while stopped
    shutil.copyfile(log, logs / "app.log.1")
    with log.open("r+b") as f:
        f.truncate(0)
    append(log, [numbered(b"n", i) for i in range(50)])
    s = start_shipper(cfg)
    led = s.wait_for(lambda led: led["sent"] == 70, 30, "the copy's new lines and the new file")
    time.sleep(1.5)  # a rescan: nothing more may arrive
    assert s.ledger()["read"] == 70
    assert led["events"].get("copy_resumed") == 1
    records = topic_records(kafka, topic, 170)
    for tag, n in ((b"c", 120), (b"n", 50)):
        a = audit(records, tag, n)
        assert (a.duplicates, a.missing, a.foreign) == (0, [], []), (tag, a.figures())
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


# -- files that only look like copies -----------------------------------------------------------
def test_a_file_that_only_starts_like_another_is_read(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A sparse 64 MiB file whose first KiB equals a known file's is read (it is no copy: it
    is larger); a true copy of the known file is skipped, counted (``copy_skipped``, bytes
    ``copy``)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    lines = [b"s %029d" % i for i in range(64)]  # 32 bytes each: 1 KiB is 32 whole lines
    append(log, lines)
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 64, 30, "the known file")
    with (logs / "sparse.log").open("wb") as f:
        f.write(log.read_bytes()[:1024])
        f.seek(64 * 1024 * 1024)
        f.write(b"\nthe sparse file's own line\n")
    shutil.copyfile(log, logs / "copy.log")
    led = s.wait_for(
        lambda led: led["events"].get("copy_skipped") == 1 and led["sent"] >= 64 + 32 + 2,
        60,
        "the sparse file read and the copy skipped",
    )
    time.sleep(1.5)  # a rescan: nothing more may arrive
    led = s.ledger()
    assert led["read"] == 64 + 32 + 2  # 32 lines, the hole (one long line), its own line
    assert led["events"].get("lines_truncated") == 1
    assert ledger_balances(led)
    m = s.metrics()
    assert m['shipper_bytes_skipped_total{reason="copy"}'] == log.stat().st_size
    counts = Counter(topic_records(kafka, topic, led["sent"]))
    assert counts[b"the sparse file's own line"] == 1
    assert all(counts[ln] == (2 if i < 32 else 1) for i, ln in enumerate(lines)), counts
    assert s.stop() == 0


# -- files deleted before they were read ----------------------------------------------------------
def test_files_deleted_before_they_are_read_are_counted(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """Files that were seen and deleted before they could be opened are counted
    (``files_deleted_unread``), with their bytes when their size was seen (``bytes_lost``
    ``deleted_unread``): here they wait for a slot while max_open_files are busy behind a
    broker that does not answer."""
    logs = tmp_path / "logs"
    logs.mkdir()
    for i in range(4):
        append(logs / f"busy{i}.log", [numbered(b"b%d" % i, j) for j in range(20_000)])
    cfg = base_config(
        kafka,
        topic,
        tmp_path,
        [str(logs / "*.log")],
        tail={"max_open_files": 4},
        queue={"max_lines": 10, "stall_timeout": "1h"},
        kafka={"unavailable_timeout": "1h"},
        shutdown={"drain_timeout": "1s"},
    )
    cfg["kafka"]["bootstrap_servers"] = [f"127.0.0.1:{free_port()}"]  # nobody answers
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["queued"] >= 10, 30, "a full queue")
    doomed = {logs / f"late{i}.log": 100 + i for i in range(3)}
    for path, n in doomed.items():
        append(path, [numbered(b"late", j) for j in range(n)])
    s.wait_for(lambda led: led["events"].get("open_deferred", 0) >= 3, 30, "deferred")
    for path in doomed:
        path.unlink()
    size = sum(sum(len(numbered(b"late", j)) + 1 for j in range(n)) for n in doomed.values())
    led = s.wait_for(
        lambda led: led["events"].get("files_deleted_unread") == 3, 30, "counted as deleted"
    )
    assert led["lost_bytes"].get("deleted_unread") == size
    s.proc.send_signal(signal.SIGSTOP)  # created and deleted while the daemon is frozen
    try:
        append(logs / "flash.log", [b"gone before it was seen"])
        (logs / "flash.log").unlink()
    finally:
        s.proc.send_signal(signal.SIGCONT)
    led = s.wait_for(
        lambda led: led["events"].get("files_deleted_unread") == 4, 30, "the flash counted"
    )
    assert led["lost_bytes"].get("deleted_unread") == size  # its size was never seen
    assert led["sent"] == 0
    assert ledger_balances(led)
    assert s.stop() == 0
    assert final_balances(s.final_ledger())
