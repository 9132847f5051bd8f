"""Line splitting: partial lines wait, CR is stripped, long lines follow their policy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.tail.lines import LineSplitter


def feed_all(sp: LineSplitter, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for p in pieces:
        lines, n = sp.feed(p)
        assert n == sum(map(len, lines))
        out += lines
    return out


def test_partial_line_waits_for_its_newline() -> None:
    """A line is emitted only once its newline arrives."""
    sp = LineSplitter(1024)
    assert sp.feed(b"partial")[0] == []
    assert sp.feed(b" line\nnext")[0] == [b"partial line"]
    assert sp.partial == b"next"


def test_crlf_and_lone_cr() -> None:
    """One trailing CR is stripped; a CR elsewhere is kept byte-exact."""
    sp = LineSplitter(1024)
    assert sp.feed(b"a\r\nb\rc\n\r\r\n")[0] == [b"a", b"b\rc", b"\r"]


def test_cr_split_from_its_lf() -> None:
    """A CR at the end of one read and its LF at the start of the next still go."""
    sp = LineSplitter(1024)
    assert sp.feed(b"x\r")[0] == []
    assert sp.feed(b"\n")[0] == [b"x"]


def test_binary_and_invalid_utf8_pass_through() -> None:
    """NUL bytes and invalid UTF-8 are payload like any other byte."""
    sp = LineSplitter(1024)
    assert sp.feed(b"\x00\xff\xfe\x80ok\n")[0] == [b"\x00\xff\xfe\x80ok"]


def test_truncate_policy_keeps_neighbours() -> None:
    """A too-long line is cut to max_line_bytes and counted; its neighbours are intact."""
    sp = LineSplitter(16)
    out = feed_all(sp, [b"before\n" + b"x" * 100 + b"\nafter\n"])
    assert out == [b"before", b"x" * 16, b"after"]
    assert sp.truncated == 1


def test_drop_policy_across_reads() -> None:
    """A too-long line that spans many reads is dropped whole under the drop policy."""
    sp = LineSplitter(16, "drop")
    out = feed_all(sp, [b"a\n" + b"y" * 10, b"y" * 10, b"y" * 50, b"y\nb\n"])
    assert out == [b"a", b"b"]
    assert sp.too_long == 1


def test_truncate_policy_across_reads() -> None:
    """A too-long partial line is truncated once, and the rest up to its newline skipped."""
    sp = LineSplitter(16)
    out = feed_all(sp, [b"z" * 20, b"z" * 20, b"zz\nc\n"])
    assert out == [b"z" * 16, b"c"]
    assert sp.truncated == 1


def test_flush_returns_partial_once() -> None:
    """flush() hands back the pending partial line once."""
    sp = LineSplitter(64)
    sp.feed(b"done\nhalf\r")
    assert sp.flush() == b"half"
    assert sp.flush() is None


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_chunking_does_not_matter(data: bytes, cuts: list[int]) -> None:
    """Any way of cutting the stream into reads gives the same lines as one read."""
    whole = LineSplitter(1 << 20)
    expect, _ = whole.feed(data)
    pieces, prev = [], 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        pieces.append(data[prev:c])
        prev = c
    pieces.append(data[prev:])
    sp = LineSplitter(1 << 20)
    assert feed_all(sp, pieces) == expect
    assert sp.partial == whole.partial
    ref = [ln[:-1] if ln.endswith(b"\r") else ln for ln in data.split(b"\n")[:-1]]
    assert expect == ref
