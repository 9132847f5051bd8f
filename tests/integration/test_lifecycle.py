"""The process lifecycle against the real broker: one owner per registry, every signal, a
closed stdout, worker threads that die, and the last lines written while a pod stops.

Every test reads the topic back: no line twice, and every missing line counted.
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipper.config import FAULT_THREADS
from tests.conftest import ROOT, Broker, free_port
from tests.integration.conftest import (
    Shipper,
    Start,
    append,
    base_config,
    final_balances,
    ledger_balances,
    ledger_from_metrics,
)
from tests.integration.test_tailing import Writer, audit, numbered, settle, topic_records
from tests.support.wait import wait_until

pytestmark = pytest.mark.kafka


def events_named(s: Shipper, name: str) -> list[dict[str, Any]]:
    """The JSON log lines of event ``name`` so far."""
    return [e for e in s.events() if e.get("event") == name]


def wait_event(s: Shipper, name: str, timeout: float = 30.0, count: int = 1) -> dict[str, Any]:
    """Wait until ``count`` log lines of event ``name`` were written; return the last."""
    got = wait_until(
        lambda: len(events_named(s, name)) >= count and events_named(s, name),
        timeout,
        f"log event {name}",
        interval=0.05,
        detail=lambda: s.logs()[-3000:],
    )
    return got[-1]


# -- one owner per registry -------------------------------------------------------------------
def test_second_process_on_one_registry_exits_at_once(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A second shipper on the same registry.path exits 1 at once with one line naming the
    path and the owner's pid, and reads and sends nothing; the first goes on, every line
    once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"a", i) for i in range(1000)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    first = start_shipper(cfg)
    first.wait_for(lambda led: led["sent"] == 1000, 30, "the first 1000 lines")
    second = copy.deepcopy(cfg)
    second["metrics"]["listen"] = f"127.0.0.1:{free_port()}"
    conf = tmp_path / "second.yaml"
    conf.write_text(yaml.safe_dump(second))
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "shipper", "run", "-c", str(conf)],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    took = time.monotonic() - t0
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1, err
    assert len(err) == 1, err
    assert cfg["registry"]["path"] in err[0]
    assert str(first.proc.pid) in err[0]
    assert r.stdout == b"", "the second process logged: it started reading or sending"
    assert took < 15, f"took {took:.1f} s"
    append(log, [numbered(b"a", i) for i in range(1000, 2000)])
    first.wait_for(lambda led: led["sent"] == 2000, 30, "the next 1000 lines")
    records = topic_records(kafka, topic, 2000)
    a = audit(records, b"a", 2000)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
    assert len(records) == 2000
    assert first.stop() == 0
    assert final_balances(first.final_ledger())


# -- SIGHUP: reload -----------------------------------------------------------------------------
def test_sighup_reload_adds_removes_inputs_and_changes_topic(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """SIGHUP with writers running, to a config that keeps input a, removes input b, adds
    input c and changes the topic: the same process goes on; a's lines arrive once across
    both topics and its later lines in the new one; b's lines before the reload once and
    none after; c's lines, from its beginning, once in the new topic; nothing dropped."""
    logs = tmp_path / "logs"
    paths = {}
    for tag in ("a", "b", "c"):
        (logs / tag).mkdir(parents=True)
        paths[tag] = logs / tag / "app.log"
        paths[tag].touch()
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "a" / "*.log")])
    cfg["inputs"].append({"paths": [str(logs / "b" / "*.log")], "start_at": "beginning"})
    s = start_shipper(cfg)
    writers = {tag: Writer(p, tag.encode(), 2000, reopen=False) for tag, p in paths.items()}
    for w in writers.values():
        w.start()
    s.wait_for(lambda led: led["sent"] > 4000, 30, "a and b shipping")
    topic2 = f"{topic}-reloaded"
    new = copy.deepcopy(cfg)
    new["inputs"] = [cfg["inputs"][0], {"paths": [str(logs / "c" / "*.log")]}]
    new["inputs"][1]["start_at"] = "beginning"
    new["kafka"]["topic"] = topic2
    s.conf.write_text(yaml.safe_dump(new))
    pid = s.proc.pid
    s.proc.send_signal(signal.SIGHUP)
    done = wait_event(s, "reload_complete")
    assert done["topics"] == [topic2]
    assert done["added_inputs"] == [1]
    sent = s.ledger()["sent"]
    s.wait_for(lambda led: led["sent"] > sent + 8000, 60, "shipping after the reload")
    written = {tag: w.finish() for tag, w in writers.items()}
    led = settle(s, 0, quiet_polls=20)
    assert s.proc.pid == pid
    assert s.proc.poll() is None
    old_records = topic_records(kafka, topic, 0)
    new_records = topic_records(kafka, topic2, 0)
    a = audit(old_records + new_records, b"a", written["a"])
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
    assert audit(new_records, b"a", written["a"]).delivered > 0
    b = audit(old_records, b"b", written["b"])
    assert (b.duplicates, b.foreign) == (0, []), b.figures()
    assert b.missing == list(range(b.delivered, written["b"])), "b lost lines before the reload"
    assert audit(new_records, b"b", written["b"]).delivered == 0
    c = audit(new_records, b"c", written["c"])
    assert (c.duplicates, c.missing, c.foreign) == (0, [], []), c.figures()
    assert audit(old_records, b"c", written["c"]).delivered == 0
    assert sum(led["dropped"].values()) == 0, led["dropped"]
    assert led["events"].get("reloads") == 1
    assert ledger_balances(led)
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


def test_sighup_with_an_invalid_config_keeps_running(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """SIGHUP with an invalid config file: one error naming the key path, counted as
    ``reload_failed``, and the old config keeps shipping."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"r", i) for i in range(100)])
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["sent"] == 100, 30, "the first lines")
    bad = copy.deepcopy(cfg)
    bad["queue"]["max_lines"] = -1
    s.conf.write_text(yaml.safe_dump(bad))
    s.proc.send_signal(signal.SIGHUP)
    failed = wait_event(s, "reload_failed")
    assert [p for p in failed["problems"] if p.startswith("queue.max_lines:")], failed
    assert failed["level"] == "error"
    append(log, [numbered(b"r", i) for i in range(100, 200)])
    led = s.wait_for(lambda led: led["sent"] == 200, 30, "lines after the failed reload")
    assert led["events"].get("reload_failed") == 1
    assert "reloads" not in led["events"]
    records = topic_records(kafka, topic, 200)
    a = audit(records, b"r", 200)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
    assert ledger_balances(led)
    assert s.stop() == 0


def test_sighup_with_the_broker_down_counts_what_it_drops(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """A reload whose drain cannot reach the broker drops what is still queued after
    shutdown.drain_timeout, counted (``reload``, or ``shutdown`` for what the sender held):
    the ledger balances, and the new config ships."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"q", i) for i in range(100)])
    cfg = base_config(
        kafka,
        topic,
        tmp_path,
        [str(logs / "*.log")],
        kafka={"unavailable_timeout": "60s"},
        shutdown={"drain_timeout": "1s"},
    )
    cfg["kafka"]["bootstrap_servers"] = [f"127.0.0.1:{free_port()}"]  # nobody answers
    s = start_shipper(cfg)
    s.wait_for(lambda led: led["queued"] == 100, 30, "lines queued")
    good = copy.deepcopy(cfg)
    good["kafka"]["bootstrap_servers"] = [kafka.bootstrap]
    s.conf.write_text(yaml.safe_dump(good))
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGHUP)
    done = wait_event(s, "reload_complete")
    assert time.monotonic() - t0 < 10
    led = s.ledger()
    assert done["dropped"] + led["dropped"]["shutdown"] == 100
    assert led["dropped"]["reload"] == done["dropped"]
    assert ledger_balances(led)
    append(log, [numbered(b"q", i) for i in range(100, 150)])
    led = s.wait_for(lambda led: led["sent"] == 50, 30, "the new config ships")
    a = audit(topic_records(kafka, topic, 50), b"q", 150)
    assert (a.duplicates, a.foreign) == (0, [])
    assert a.missing == list(range(100))  # counted above
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


# -- SIGUSR1 and the other signals --------------------------------------------------------------
def test_sigusr1_logs_the_ledger_and_every_open_file(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """SIGUSR1 writes one ``state`` line with the ledger and each open file's position (a
    partial last line included), and the daemon goes on."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    append(log, [numbered(b"u", i) for i in range(50)])
    append(log, b"partial")
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(logs / "*.log")]))
    s.wait_for(lambda led: led["sent"] == 50, 30, "50 lines")
    s.proc.send_signal(signal.SIGUSR1)
    state = wait_event(s, "state")
    assert state["lines_read"] == 50
    assert state["balanced"] is True
    (f,) = [f for f in state["files"] if f["path"] == str(log)]
    assert f["offset"] == log.stat().st_size
    assert f["partial_bytes"] == len(b"partial")
    assert f["exact"] == log.stat().st_size - len(b"partial")
    assert len(state["threads"]) >= 5
    assert all(state["threads"].values()), state["threads"]
    append(log, b" line\n")
    s.wait_for(lambda led: led["sent"] == 51, 30, "the completed line")
    records = topic_records(kafka, topic, 51)
    assert records[-1] == b"partial line"
    a = audit(records, b"u", 50)
    assert (a.duplicates, a.missing) == (0, [])
    assert s.stop() == 0
    assert final_balances(s.final_ledger())


def test_every_other_signal_is_logged_or_ignored_never_fatal(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGXCPU, SIGXFSZ, SIGPWR and real-time
    signals are logged (``signal_ignored``) and ignored, SIGPIPE is ignored: the daemon
    ships on; SIGQUIT then stops it cleanly."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    s = start_shipper(base_config(kafka, topic, tmp_path, [str(logs / "*.log")]))
    logged = [
        signal.SIGUSR2,
        signal.SIGALRM,
        signal.SIGVTALRM,
        signal.SIGPROF,
        signal.SIGIO,
        signal.SIGXCPU,
        signal.SIGXFSZ,
        signal.SIGPWR,
        signal.SIGRTMIN,
        signal.SIGRTMAX,
    ]
    for sig in [*logged, signal.SIGPIPE]:
        s.proc.send_signal(sig)
    s.wait_for(
        lambda led: led["events"].get("signals_ignored", 0) == len(logged), 30, "signals logged"
    )
    names = {e["signal"] for e in events_named(s, "signal_ignored")}
    assert names == {signal.Signals(sig).name for sig in logged}
    append(log, [numbered(b"s", i) for i in range(100)])
    led = s.wait_for(lambda led: led["sent"] == 100, 30, "lines after the signals")
    assert ledger_balances(led)
    assert s.stop(signal.SIGQUIT) == 0
    assert events_named(s, "shutdown_started")[-1]["signal"] == "SIGQUIT"
    assert final_balances(s.final_ledger())
    a = audit(topic_records(kafka, topic, 100), b"s", 100)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], [])


# -- a closed stdout ------------------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """/metrics at ``url`` as ``{"name{labels}": value}``."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


def one_input(kafka: Broker, topic: str, tmp_path: Path) -> tuple[Path, Path, str]:
    """A config file for one input, ``logs/*.log``: the log to write, the config, /metrics."""
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")])
    conf = tmp_path / "shipper.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    return logs / "app.log", conf, f"http://{cfg['metrics']['listen']}"


def ships_without_its_logs(
    proc: subprocess.Popen[bytes], kafka: Broker, topic: str, *, log: Path, url: str, tag: bytes
) -> None:
    """The shipper ``proc``, whose log lines have nowhere to go, ships 1000 lines exactly
    once, counts the log lines it dropped, balances its ledger and exits 0 on SIGTERM."""
    try:
        wait_until(lambda: answers(url), 30, "/health")
        append(log, [numbered(tag, i) for i in range(1000)])
        wait_until(
            lambda: scrape(url).get("shipper_lines_sent_total") == 1000, 30, "1000 lines sent"
        )
        m = scrape(url)
        assert m["shipper_log_lines_dropped_total"] >= 1  # file_opened at least
        assert ledger_balances(ledger_from_metrics(m))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    a = audit(topic_records(kafka, topic, 1000), tag, 1000)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], [])


def test_closed_stdout_drops_log_lines_not_the_daemon(
    kafka: Broker, topic: str, tmp_path: Path
) -> None:
    """``shipper run ... | head -1``: once stdout is closed, log lines are dropped and
    counted (``shipper_log_lines_dropped_total``); every thread ships on, and SIGTERM still
    drains and exits 0."""
    log, conf, url = one_input(kafka, topic, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipper", "run", "-c", str(conf)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())  # what `head -1` shows
    assert first["event"] in ("sender_started", "shipper_started")
    proc.stdout.close()  # ... and then `head` exits
    ships_without_its_logs(proc, kafka, topic, log=log, url=url, tag=b"p")


def test_started_with_stdout_and_stderr_closed(kafka: Broker, topic: str, tmp_path: Path) -> None:
    """``shipper run ... >&- 2>&-``: Python has no ``sys.stdout`` then. The daemon starts,
    ships, drops and counts its log lines, and keeps descriptors 1 and 2 off its log files
    and its Kafka connection (/dev/null on them); SIGTERM exits 0."""
    log, conf, url = one_input(kafka, topic, tmp_path)
    proc = subprocess.Popen(
        ["sh", "-c", 'exec "$0" -m shipper run -c "$1" >&- 2>&-', sys.executable, str(conf)],
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
    )
    wait_until(lambda: answers(url) or proc.poll() is not None, 30, "/health")
    fds = {fd: os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (1, 2) if proc.poll() is None}
    ships_without_its_logs(proc, kafka, topic, log=log, url=url, tag=b"c")
    assert fds == {1: os.devnull, 2: os.devnull}


# -- worker threads that die -------------------------------------------------------------------
def healthy(s: Shipper) -> bool:
    """/health answers 200 running (False while it does not answer at all)."""
    try:
        code, doc = s.health()
    except OSError:
        return False
    return code == 200 and doc["status"] == "running"


@pytest.mark.parametrize("thread", FAULT_THREADS)
def test_each_worker_thread_broken_once(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start, thread: str
) -> None:
    """A worker thread that ends unexpectedly is logged (``thread_died`` with its name),
    /health says so (503 naming it), its stage is rebuilt, and shipping goes on: no line
    twice, and every missing line counted as dropped."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    cfg = base_config(kafka, topic, tmp_path, [str(logs / "*.log")], registry={"reserve": "16KiB"})
    s = start_shipper(cfg, env={"SHIPPER_TEST_FAULTS": thread})
    writer = Writer(log, b"t", 3000, reopen=False)
    writer.start()
    try:
        s.wait_for(lambda led: led["sent"] > 1000, 30, "shipping")
        s.proc.send_signal(signal.SIGUSR2)
        if thread == "shipper-metrics":  # /health itself is gone until it is restarted
            wait_event(s, "thread_died")
        else:
            _, doc = wait_until(
                lambda: (h := s.health())[0] == 503 and h,
                15,
                "503 naming the dead thread",
                interval=0.02,
                detail=lambda: s.logs()[-3000:],
            )
            assert doc["status"] == "failed"
            assert thread in doc["dead_threads"]
        died = wait_event(s, "thread_died")
        assert thread in died["threads"]
        wait_event(s, "stage_restarted")
        wait_until(lambda: healthy(s), 30, "healthy again")
        sent = s.ledger()["sent"]
        s.wait_for(lambda led: led["sent"] > sent + 3000, 60, "shipping after the restart")
    finally:
        written = writer.finish()
    led = settle(s, written, quiet_polls=20)
    assert ledger_balances(led)
    assert led["events"].get("threads_died") == 1
    assert led["events"].get("stages_restarted") == 1
    assert s.stop() == 0
    final = s.final_ledger()
    assert final_balances(final)
    records = topic_records(kafka, topic, 0)
    a = audit(records, b"t", written)
    print(f"[{thread} broken] {a.figures()} dropped={final['dropped']}")
    assert (a.duplicates, a.foreign) == (0, []), a.figures()
    assert len(a.missing) <= final["lines_dropped"], a.figures()
    if thread != "shipper-sender":  # only the sender holds lines it may have to drop
        assert a.missing == []


# -- shutdown.read_idle --------------------------------------------------------------------------
def test_lines_written_after_sigterm_still_ship(
    kafka: Broker, topic: str, tmp_path: Path, start_shipper: Start
) -> None:
    """On SIGTERM the daemon keeps reading until the files are idle for read_idle, so the
    lines an app writes while it stops (half a second here) are shipped, then drains."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.touch()
    cfg = base_config(
        kafka,
        topic,
        tmp_path,
        [str(logs / "*.log")],
        shutdown={"drain_timeout": "10s", "read_idle": "1s"},
    )
    s = start_shipper(cfg)
    writer = Writer(log, b"i", 2000, reopen=False)
    writer.start()
    s.wait_for(lambda led: led["sent"] > 500, 30, "shipping")
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    at_signal = writer.written
    time.sleep(0.5)  # the app goes on writing while it stops
    written = writer.finish()
    assert s.stop(timeout=30) == 0
    took = time.monotonic() - t0
    final = s.final_ledger()
    assert final_balances(final)
    assert written > at_signal + 300
    assert final["lines_read"] == written
    assert final["lines_dropped"] == 0
    assert 1.0 <= took < 10 + 3, f"took {took:.1f} s"
    a = audit(topic_records(kafka, topic, written), b"i", written)
    assert (a.duplicates, a.missing, a.foreign) == (0, [], []), a.figures()
    assert os.path.exists(cfg["registry"]["path"])
