"""Line splitting: partial lines wait, CR is stripped, long lines follow their policy."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.chunk import Chunk, Source
from shipper.tail.lines import LineSplitter


def feed_all(sp: LineSplitter, pieces: list[bytes], starts: list[int] | None = None) -> list[bytes]:
    """Feed ``pieces`` read one after the other from offset 0; collect the lines (and, into
    ``starts``, where each line starts in the file)."""
    out: list[bytes] = []
    at = 0
    for p in pieces:
        cut = sp.feed(p, at)
        at += len(p)
        assert cut.nbytes == sum(map(len, cut.lines))
        out += cut.lines
        if starts is not None:
            ch = Chunk(cut.lines, cut.nbytes, Source("f", 0), 0.0, cut.base, cut.eol, cut.offsets)
            starts += ch.starts()
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
    expect = whole.feed(data).lines
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


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).filter(lambda b: b"\n" not in b), max_size=30),
    crlf=st.lists(st.booleans(), max_size=30),
    cuts=st.lists(st.integers(0, 1500), max_size=8),
    limit=st.integers(4, 60),
    policy=st.sampled_from(["truncate", "drop"]),
)
def test_offsets_point_at_each_line(
    lines: list[bytes], crlf: list[bool], cuts: list[int], limit: int, policy: str
) -> None:
    """Whatever the line ends, read sizes and long-line policy, each line's offset is where
    that line starts in the file."""
    ends = (
        [b"\r\n" if crlf[i % len(crlf)] else b"\n" for i in range(len(lines))]
        if crlf
        else [b"\n"] * len(lines)
    )
    data = b"".join(ln + e for ln, e in zip(lines, ends, strict=True))
    pieces, prev = [], 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        pieces.append(data[prev:c])
        prev = c
    pieces.append(data[prev:])
    starts: list[int] = []
    out = feed_all(LineSplitter(limit, policy), pieces, starts)
    assert len(starts) == len(out)
    for line, at in zip(out, starts, strict=True):
        assert data[at:].startswith(line)
        assert at == 0 or data[at - 1 : at] == b"\n"
