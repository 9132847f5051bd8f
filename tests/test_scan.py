"""A scan finds what the globs match (as glob does), reports what it cannot list, and
walks each directory link once."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from shipper.tail.discovery import Matcher


@pytest.fixture(name="tree")
def fixture_tree(tmp_path: Path) -> Path:
    """A small log tree: files at several depths, other suffixes, a link loop, a dangling
    link."""
    for rel in ["a/1.log", "a/b/2.log", "a/b/c/3.log", "a/x/4.txt", "d/5.log", "d/e/6.log"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x\n")
    (tmp_path / "top.log").write_text("x\n")
    (tmp_path / "a" / "b" / "c" / "7.log.1").write_text("x\n")
    (tmp_path / "a" / "dangling.log").symlink_to(tmp_path / "nowhere")
    return tmp_path


@pytest.mark.parametrize(
    "pattern",
    ["*.log", "*/*.log", "a/*/*.log", "top.log", "[ad]/*.log", "a/*/c/*.log*", "a/b/**/*.log"],
)
def test_scan_finds_what_glob_finds(tree: Path, pattern: str) -> None:
    """Without links to directories, a scan returns exactly glob's files."""
    full = str(tree / pattern)
    want = {p for p in glob.glob(full, recursive=True) if not os.path.isdir(p)}
    assert Matcher([full], []).scan().paths == want


def test_double_star_walks_a_directory_link_once(tree: Path) -> None:
    """A link back to an ancestor is walked through once, then reported as a loop: the
    scan ends, and every real file is found."""
    (tree / "a" / "b" / "loop").symlink_to(tree / "a")
    scan = Matcher([str(tree / "**" / "*.log")], []).scan()
    real = {str(tree / r) for r in ["a/1.log", "a/b/2.log", "a/b/c/3.log", "d/5.log", "d/e/6.log"]}
    assert real | {str(tree / "top.log"), str(tree / "a" / "dangling.log")} <= scan.paths
    assert scan.loops
    assert len(scan.paths) < 20


def test_excludes_apply_to_the_scan(tree: Path) -> None:
    """Excludes without a slash match names, with one the full path."""
    m = Matcher([str(tree / "**" / "*.log*")], ["*.1", str(tree / "d" / "e" / "*")])
    paths = m.scan().paths
    assert str(tree / "a" / "b" / "c" / "7.log.1") not in paths
    assert str(tree / "d" / "e" / "6.log") not in paths
    assert str(tree / "d" / "5.log") in paths


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any directory")
def test_a_directory_that_cannot_be_listed_is_reported(tree: Path) -> None:
    """scandir's EACCES is reported with the directory, and the rest is still found."""
    locked = tree / "a" / "b"
    locked.chmod(0o000)
    try:
        scan = Matcher([str(tree / "**" / "*.log")], []).scan()
    finally:
        locked.chmod(0o755)
    assert str(locked) in scan.unreadable
    assert str(tree / "d" / "5.log") in scan.paths


def test_a_missing_root_is_no_error(tmp_path: Path) -> None:
    """A glob whose directory does not exist (yet) finds nothing and reports nothing."""
    scan = Matcher([str(tmp_path / "later" / "**" / "*.log")], []).scan()
    assert (scan.paths, scan.unreadable) == (set(), {})
