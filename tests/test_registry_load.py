"""The registry never stops the daemon: streamed loading with per-entry checks, the
max_entries bound, one owner per file, temp files per process, a deleted directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.errors import RegistryLockedError
from shipper.tail.registry import Registry, RegistryCorruptError


def entry(i: int, **over: Any) -> dict[str, Any]:
    """A well-formed entry for inode ``i``."""
    e: dict[str, Any] = {
        "dev": 1,
        "ino": i,
        "fp_len": 10,
        "fp": f"{i:024x}",
        "path": f"/var/log/f{i}.log",
        "offset": 100 + i,
        "exact": 100 + i,
        "seen": 1_700_000_000.0 + i,
    }
    e.update(over)
    return e


def registry_file(path: Path, items: list[str]) -> None:
    path.write_text('{"version":1,"files":[' + ",".join(items) + "]}")


def dumps(e: dict[str, Any]) -> str:
    return json.dumps(e, separators=(",", ":"))


@pytest.fixture(name="reg_path")
def fixture_reg_path(tmp_path: Path) -> Path:
    """Where the registry of a test lives."""
    return tmp_path / "state" / "registry.json"


def load(path: Path, max_entries: int = 100_000) -> tuple[Registry, Any]:
    reg = Registry(str(path), 4096, 3600, max_entries)
    return reg, reg.load()


@pytest.mark.parametrize(
    "bad",
    [
        dumps(entry(9, offset=-5)),
        dumps(entry(9, offset=5.0)),
        dumps(entry(9, offset=True)),
        dumps(entry(9, offset="12")),
        dumps(entry(9, exact=500)),  # past the saved offset
        dumps(entry(9, seen=float("nan"))),
        dumps(entry(9, fp="not hex")),
        dumps(entry(9, path=["x"])),
        dumps(entry(9, skip="yes")),
        dumps({k: v for k, v in entry(9).items() if k != "dev"}),
        '{"dev":1,"ino":9,"fp_len":10,"fp":"a","path":"p","offset":1e400,"seen":1}',
        '{"dev":1,"ino":9,"fp_len":10,"fp":"a","path":"p","offset":' + "9" * 5000 + ',"seen":1}',
        "[1,2,3]",
        "null",
    ],
)
def test_a_malformed_entry_is_dropped_and_its_neighbours_kept(reg_path: Path, bad: str) -> None:
    """Any malformed entry between two good ones is dropped and counted; both neighbours are
    kept, and a copy of the file is set aside."""
    reg_path.parent.mkdir()
    registry_file(reg_path, [dumps(entry(1)), bad, dumps(entry(2))])
    reg, report = load(reg_path)
    assert (report.entries, report.dropped, report.trimmed) == (2, 1, 0)
    assert report.damaged
    assert reg.find("1:1") is not None
    assert reg.find("1:2") is not None
    assert reg.find("1:9") is None
    assert list(reg_path.parent.glob("registry.json.corrupt-*"))


@pytest.mark.parametrize(
    "text",
    [b"[]", b'"hello"', b"null", b"", b"{", b"\xff\xfe", b'{"version":2,"files":[]}', b"{}"],
)
def test_a_file_that_is_no_registry_is_set_aside(reg_path: Path, text: bytes) -> None:
    """Not a registry at all: RegistryCorruptError (no traceback), nothing kept, a copy kept."""
    reg_path.parent.mkdir()
    reg_path.write_bytes(text)
    reg = Registry(str(reg_path), 4096, 3600)
    with pytest.raises(RegistryCorruptError):
        reg.load()
    assert len(reg) == 0
    assert list(reg_path.parent.glob("registry.json.corrupt-*"))


def test_structure_broken_midway_keeps_what_came_before(reg_path: Path) -> None:
    """Deep nesting in the third entry: the first two are kept, the rest counted dropped."""
    reg_path.parent.mkdir()
    deep = '{"dev":' + "[" * 50_000 + "]" * 50_000 + "}"
    registry_file(reg_path, [dumps(entry(1)), dumps(entry(2)), deep, dumps(entry(3))])
    reg, report = load(reg_path)
    assert report.entries == 2
    assert report.dropped == 1
    assert report.problem is not None
    assert reg.find("1:3") is None


def test_max_entries_keeps_the_most_recently_seen(reg_path: Path) -> None:
    """With more entries than max_entries, the most recently seen are kept, the rest
    counted as trimmed."""
    reg_path.parent.mkdir()
    items = [dumps(entry(i, seen=1_700_000_000.0 + (i * 7919) % 1000)) for i in range(1000)]
    registry_file(reg_path, items)
    reg, report = load(reg_path, max_entries=100)
    assert (report.entries, report.trimmed) == (100, 900)
    kept = sorted((1_700_000_000.0 + (i * 7919) % 1000, i) for i in range(1000))[-100:]
    assert all(reg.find(f"1:{i}") is not None for _, i in kept)


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=50, deadline=None)
@given(
    paths=st.lists(
        st.one_of(_text, st.sampled_from(["},{", '"},{"', "}, {", "]}"])), min_size=1, max_size=40
    ),
    bad=st.sets(st.integers(0, 39)),
)
def test_bulk_decoding_agrees_with_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, paths: list[str], bad: set[int]
) -> None:
    """Paths holding JSON punctuation and malformed entries anywhere: exactly the
    well-formed entries are kept, whatever the decoder's bulk cuts."""
    path = tmp_path_factory.mktemp("reg") / "registry.json"
    items = []
    for i, p in enumerate(paths):
        e = entry(i, path=p)
        if i in bad:
            e["offset"] = -1
        items.append(json.dumps(e))
    registry_file(path, items)
    reg, report = load(path)
    good = [i for i in range(len(paths)) if i not in bad]
    if not good:
        return  # nothing kept, no version problem: an empty registry
    assert report.entries == len(good)
    assert report.dropped == len(paths) - len(good)
    for i in good:
        found = reg.find(f"1:{i}")
        assert found is not None
        assert found.path == paths[i]


def test_one_owner_per_registry(reg_path: Path) -> None:
    """A second owner of the same registry is refused, naming the holder's pid; once the
    first lets go, it may take it."""
    first = Registry(str(reg_path), 4096, 3600)
    first.lock()
    second = Registry(str(reg_path), 4096, 3600)
    with pytest.raises(RegistryLockedError) as info:
        second.lock()
    assert info.value.pid == os.getpid()
    assert str(reg_path) in str(info.value)
    first.release()
    second.lock()
    second.release()


def test_temp_files_are_per_process_and_stale_ones_removed(reg_path: Path) -> None:
    """The temp file names the process; temp files left by an earlier owner are removed
    when the lock is taken."""
    reg_path.parent.mkdir()
    stale = reg_path.with_name("registry.json.tmp.99999999")
    stale.write_text("{}")
    reg = Registry(str(reg_path), 4096, 3600)
    reg.lock()
    assert not stale.exists()
    reg.add(dev=1, ino=2, fp_len=1, fp="ab", path="/x", start=0)
    assert reg.save()
    assert not list(reg_path.parent.glob("registry.json.tmp*"))
    reg.release()


def test_a_deleted_directory_is_created_again_with_its_lock(reg_path: Path) -> None:
    """The registry's directory deleted under a running owner: the next save creates it,
    the lock file with it (naming us), and a second owner is still refused."""
    reg = Registry(str(reg_path), 4096, 3600)
    reg.lock()
    reg.add(dev=1, ino=2, fp_len=1, fp="ab", path="/x", start=0)
    assert reg.save()
    for p in reg_path.parent.iterdir():
        p.unlink()
    reg_path.parent.rmdir()
    assert reg.save()
    assert json.loads(reg_path.read_text())["files"][0]["ino"] == 2
    lock = reg_path.with_name("registry.json.lock")
    assert lock.read_text().strip() == str(os.getpid())
    with pytest.raises(RegistryLockedError):
        Registry(str(reg_path), 4096, 3600).lock()
    reg.release()


def test_skip_and_closed_state_survive_a_save(reg_path: Path) -> None:
    """A long line being skipped and the size and mtime a file was closed with are saved
    with an exact save and loaded again."""
    reg = Registry(str(reg_path), 4096, 3600)
    e = reg.add(dev=1, ino=2, fp_len=1, fp="ab", path="/x", start=0)
    reg.commit(e, 500)
    reg.closed(e, 500, 123_456_789, skip=True)
    assert reg.save(exact=True)
    reg.close()
    again, report = load(reg_path)
    assert report.entries == 1
    got = again.find("1:2")
    assert got is not None
    assert (got.exact, got.skip, got.closed_size, got.closed_mtime) == (500, True, 500, 123_456_789)
    again.close()
