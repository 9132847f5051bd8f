"""The registry: positions that survive restarts, saved ahead of what is handed on."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipper.tail.registry import Entry, Registry, RegistryCorruptError
from tests.support.wait import wait_until

RESERVE = 1000


@pytest.fixture(name="path")
def fixture_path(tmp_path: Path) -> Path:
    """Where the registry file lives (its directory exists)."""
    return tmp_path / "state" / "registry.json"


@pytest.fixture(name="registry")
def fixture_registry(path: Path) -> Iterator[Registry]:
    """A registry without its background writer (every save is synchronous)."""
    reg = Registry(str(path), RESERVE, 3600)
    yield reg
    reg.close()


@pytest.fixture(name="background")
def fixture_background(path: Path) -> Iterator[Registry]:
    """A registry with its background writer running."""
    reg = Registry(str(path), RESERVE, 3600)
    reg.start()
    yield reg
    reg.close()


def fp(ino: int) -> str:
    """The fingerprint (hex, as a real one) of the file with inode ``ino``."""
    return f"{ino:024x}"


def add(reg: Registry, ino: int = 1, start: int = 0, path: str = "/logs/app.log") -> Entry:
    """Track a file with identity ``7:ino``."""
    return reg.add(dev=7, ino=ino, fp_len=4, fp=fp(ino), path=path, start=start)


def on_disk(path: Path) -> dict[str, dict[str, Any]]:
    """The saved entries by ``dev:ino``."""
    doc = json.loads(path.read_bytes())
    assert doc["version"] == 1
    return {f"{e['dev']}:{e['ino']}": e for e in doc["files"]}


def test_add_and_find(registry: Registry) -> None:
    """An added file is found by its identity key, and only by it."""
    e = add(registry, ino=42)
    assert e.key == "7:42"
    assert registry.find("7:42") is e
    assert registry.find("7:43") is None
    assert len(registry) == 1
    assert (e.exact, e.restored) == (0, False)
    assert e.durable == -1  # never saved: the first line handed on needs a save
    assert not registry.covered(e, 1)


def test_add_at_zero_writes_nothing(registry: Registry, path: Path) -> None:
    """A file read from its beginning needs no save before its first line is handed on."""
    add(registry)
    assert registry.writes == 0
    assert registry.dirty is False
    assert not path.exists()


def test_add_past_zero_is_saved_in_its_round(registry: Registry, path: Path) -> None:
    """A file started at its end marks the registry dirty, and the one save that ends the
    round stores its start, so a restart does not read it from 0."""
    add(registry, ino=1, start=500)
    add(registry, ino=2, start=700)
    assert registry.writes == 0
    assert registry.dirty is True
    assert registry.save() is True
    assert registry.writes == 1
    assert registry.dirty is False
    saved = on_disk(path)
    assert (saved["7:1"]["offset"], saved["7:2"]["offset"]) == (500, 700)


def test_advance_saves_a_reservation_ahead(registry: Registry, path: Path) -> None:
    """Advancing past the durable offset saves ``end + reserve`` before returning."""
    e = add(registry)
    assert registry.advance(e, 100) is True
    assert e.durable == 100 + RESERVE
    assert on_disk(path)["7:1"]["offset"] == 100 + RESERVE
    assert registry.writes == 1


def test_advance_inside_the_reservation_writes_nothing(registry: Registry) -> None:
    """Without the background writer, advancing inside the reservation needs no write."""
    e = add(registry)
    registry.advance(e, 100)
    for end in (200, 600, 100 + RESERVE):
        assert registry.advance(e, end) is True
    assert registry.writes == 1
    registry.advance(e, 101 + RESERVE)
    assert registry.writes == 2
    assert e.durable == 101 + 2 * RESERVE


def test_background_writer_saves_the_next_reservation(background: Registry, path: Path) -> None:
    """Once a quarter of the reservation is used, the next one is saved in the background
    and applied at the next advance, before the current one runs out."""
    e = add(background)
    background.advance(e, 100)  # synchronous: nothing was durable
    assert e.durable == 1100
    background.advance(e, 400)  # 700 left of 1000: the next reservation goes to the writer
    wait_until(lambda: background.writes == 2, what="the background save")
    assert on_disk(path)["7:1"]["offset"] == 1400
    assert background.advance(e, 450) is True
    assert e.durable == 1400
    assert background.writes == 2


def test_truncation_voids_a_save_from_before(background: Registry) -> None:
    """A background save taken before a truncation does not raise the new content's
    durable offset: the next advance saves afresh."""
    e = add(background)
    background.advance(e, 100)
    background.advance(e, 400)
    wait_until(lambda: background.writes == 2, what="the background save")
    background.restart(e, 3, "new")
    assert (e.exact, e.fp_len, e.fp) == (0, 3, "new")
    assert background.advance(e, 50) is True
    assert e.durable == 50 + RESERVE
    assert background.writes == 3


def test_commit_and_exact_save(registry: Registry, path: Path) -> None:
    """``save(exact=True)`` (a clean stop) stores the committed positions, not the
    reservations, and those become the durable offsets."""
    e = add(registry)
    registry.advance(e, 300)
    registry.commit(e, 300)
    assert on_disk(path)["7:1"]["offset"] == 300 + RESERVE
    assert registry.save(exact=True) is True
    saved = on_disk(path)["7:1"]
    assert (saved["offset"], saved["exact"]) == (300, 300)
    assert e.durable == 300


def test_close_finishes_the_save_in_flight(background: Registry, path: Path) -> None:
    """``close`` waits for a background save and stops the writer thread."""
    e = add(background)
    background.advance(e, 100)
    background.advance(e, 400)
    background.close()
    assert background.writes == 2
    assert on_disk(path)["7:1"]["offset"] == 1400
    assert not [t for t in threading.enumerate() if t.name == "shipper-registry"]


def test_restart_from_disk(registry: Registry, path: Path) -> None:
    """A new registry loads the saved entries; they count as restored until reopened."""
    e = add(registry, ino=5, path="/logs/a.log")
    registry.advance(e, 250)
    registry.commit(e, 250)
    registry.save(exact=True)
    again = Registry(str(path), RESERVE, 3600)
    assert again.existed is False
    again.load()
    assert again.existed is True
    got = again.find("7:5")
    assert got is not None
    assert (got.path, got.durable, got.exact, got.fp_len, got.fp) == (
        "/logs/a.log",
        250,
        250,
        4,
        fp(5),
    )
    assert got.restored is True
    again.opened(got, "/logs/a.log.1", 123.0)
    assert (got.restored, got.path, got.seen) == (False, "/logs/a.log.1", 123.0)


def test_closed_like_finds_files_not_open_now(registry: Registry, path: Path) -> None:
    """Copy candidates are the entries whose file no reader holds: known from disk, or
    closed in this run; never an open one, a forgotten one, or one under an old fingerprint."""

    def like(ino: int) -> list[str]:
        return [
            e.key
            for e in registry.closed_like(b"head", lambda _h: fp(ino), lambda n, m: 0 < n <= m)
        ]

    a = add(registry, ino=1)
    registry.opened(a, "/logs/a.log", 1.0)
    assert like(1) == []  # open: a copy of it is the reader's business
    registry.closed(a, 4, 10, False)
    assert like(1) == ["7:1"]
    registry.opened(a, "/logs/a.log", 2.0)
    assert like(1) == []
    registry.refingerprint(a, 4, fp(9))  # same length, other bytes: as after a truncation
    registry.closed(a, 4, 10, False)
    assert (like(1), like(9)) == ([], ["7:1"])
    registry.forget(a)
    assert like(9) == []
    b = add(registry, ino=2)
    registry.closed(b, 4, 10, False)
    registry.add(dev=7, ino=2, fp_len=4, fp=fp(3), path="/logs/b.log", start=0)  # inode reused
    assert like(2) == []
    # Known from disk and not reopened yet: a candidate from the start.
    c = add(registry, ino=4)
    registry.commit(c, 4)
    registry.save(exact=True)
    again = Registry(str(path), RESERVE, 3600)
    again.load()
    assert [e.key for e in again.closed_like(b"head", lambda _h: fp(4), lambda n, m: True)] == [
        "7:4"
    ]


def test_crash_leaves_the_reservation(registry: Registry, path: Path) -> None:
    """Without a clean stop the file holds the reservation: a restart resumes past every
    line handed on, never before one."""
    e = add(registry)
    registry.advance(e, 300)
    registry.commit(e, 300)
    again = Registry(str(path), RESERVE, 3600)
    again.load()
    got = again.find("7:1")
    assert got is not None
    assert got.durable == 300 + RESERVE
    assert got.exact <= 300
    again.resumed_past(got, 1250)
    assert got.exact == 1250


def test_missing_file_is_a_first_start(registry: Registry) -> None:
    """No file: nothing is loaded and this is not a restart."""
    registry.load()
    assert len(registry) == 0
    assert registry.existed is False


def test_refingerprint_keeps_the_identity(registry: Registry) -> None:
    """Hashing more of a growing file changes the fingerprint, not the key."""
    e = add(registry)
    registry.refingerprint(e, 1024, "longer")
    assert (e.key, e.fp_len, e.fp) == ("7:1", 1024, "longer")
    assert registry.find("7:1") is e


def test_forget(registry: Registry) -> None:
    """A deleted file is forgotten; forgetting an entry that was replaced leaves the new one."""
    old = add(registry, ino=1)
    registry.forget(old)
    assert registry.find("7:1") is None
    first = add(registry, ino=2)
    second = add(registry, ino=2)  # the same identity tracked anew
    registry.forget(first)
    assert registry.find("7:2") is second


def test_forget_old(path: Path) -> None:
    """Entries not seen for ``forget_after`` are dropped unless their file is open."""
    reg = Registry(str(path), RESERVE, forget_after=60)
    stale, live, fresh = add(reg, ino=1), add(reg, ino=2), add(reg, ino=3)
    reg.seen(stale, 1000.0)
    reg.seen(live, 1000.0)
    reg.seen(fresh, 1090.0)
    assert reg.forget_old(1100.0, live={"7:2"}) == 1
    assert reg.find("7:1") is None
    assert reg.find("7:2") is live
    assert reg.find("7:3") is fresh
    assert reg.forget_old(1100.0, live={"7:2"}) == 0


def test_save_is_atomic_and_private(registry: Registry, path: Path) -> None:
    """The file is replaced whole (no temp file left beside it and its lock) and readable
    by its owner only."""
    e = add(registry)
    registry.advance(e, 10)
    assert sorted(p.name for p in path.parent.iterdir()) == ["registry.json", "registry.json.lock"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unwritable_directory(tmp_path: Path) -> None:
    """When the file cannot be written, ``advance`` says so (nothing may be handed on), the
    registry reports unhealthy with the error, and recovers once writing works again."""
    parent = tmp_path / "state"
    parent.write_bytes(b"a file where the directory should be")
    reg = Registry(str(parent / "registry.json"), RESERVE, 3600)
    e = add(reg)
    assert reg.advance(e, 100) is False
    assert reg.healthy is False
    assert reg.last_error
    assert not reg.covered(e, 100)
    parent.unlink()
    try:
        assert reg.save() is True
        assert (reg.healthy, reg.last_error) == (True, None)
        assert reg.advance(e, 100) is True
        assert e.durable >= 100
    finally:
        reg.close()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"version": 99, "files": []}'],
    ids=["garbage", "unknown-version"],
)
def test_corrupt_file_is_kept_aside(registry: Registry, path: Path, content: bytes) -> None:
    """An unreadable file raises RegistryCorruptError naming a copy kept beside it, and
    nothing of it is loaded."""
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(RegistryCorruptError, match="a copy was kept at"):
        registry.load()
    assert len(registry) == 0
    copies = list(path.parent.glob("registry.json.corrupt-*"))
    assert len(copies) == 1
    assert copies[0].read_bytes() == content


def test_an_entry_missing_fields_is_dropped_and_kept_aside(registry: Registry, path: Path) -> None:
    """A registry whose only entry lacks fields loads nothing; the entry is reported
    dropped, naming a copy of the file kept beside it."""
    content = b'{"version": 1, "files": [{"dev": 1}]}'
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    report = registry.load()
    assert (report.existed, report.entries, report.dropped, report.damaged) == (True, 0, 1, True)
    assert report.problem is not None
    assert "a copy was kept at" in report.problem
    assert len(registry) == 0
    copies = list(path.parent.glob("registry.json.corrupt-*"))
    assert len(copies) == 1
    assert copies[0].read_bytes() == content
