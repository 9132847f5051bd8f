"""A new file is a copy of an open one only on proof: the same start, no larger, the same
bytes where it ends. Equal first bytes alone prove nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.tail.identity import is_copy_of

HEAD = 1024


@pytest.fixture(name="original")
def fixture_original(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An open file of 8 KiB of distinct lines: its descriptor and content."""
    data = b"".join(b"line %06d of the original\n" % i for i in range(300))[:8192]
    p = tmp_path / "original.log"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def opened(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def check(tmp_path: Path, original: tuple[int, bytes], data: bytes) -> bool:
    fd = opened(tmp_path / "new.log", data)
    try:
        return is_copy_of(fd, len(data), data[:HEAD], original[0], len(original[1]))
    finally:
        os.close(fd)


def test_a_true_copy_and_a_copy_in_progress_are_copies(
    tmp_path: Path, original: tuple[int, bytes]
) -> None:
    """The whole content, or any prefix of it (a copy being written), is a copy."""
    data = original[1]
    assert check(tmp_path, original, data)
    assert check(tmp_path, original, data[:5000])
    assert check(tmp_path, original, data[:100])


def test_a_larger_file_with_the_same_start_is_no_copy(
    tmp_path: Path, original: tuple[int, bytes]
) -> None:
    """A file that starts like the original but is larger (a sparse file, a log with the
    same header that went on) is no copy."""
    assert not check(tmp_path, original, original[1] + b"more\n")
    sparse = tmp_path / "sparse.log"
    with sparse.open("wb") as f:
        f.write(original[1][:HEAD])
        f.truncate(10 * 1024 * 1024)
    fd = os.open(sparse, os.O_RDONLY)
    try:
        assert not is_copy_of(fd, 10 * 1024 * 1024, original[1][:HEAD], *original_fd(original))
    finally:
        os.close(fd)


def original_fd(original: tuple[int, bytes]) -> tuple[int, int]:
    return original[0], len(original[1])


def test_same_start_different_end_is_no_copy(tmp_path: Path, original: tuple[int, bytes]) -> None:
    """Same first KiB, same size, other bytes where it ends: no copy."""
    data = bytearray(original[1][:6000])
    data[-10:] = b"different\n"
    assert not check(tmp_path, original, bytes(data))
