"""The tailer, in-process on real files, against random sequences of writes, rotations,
truncations, deletions, restarts and crashes (a hypothesis state machine)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.test_tailer import Harness

TAIL: dict[str, Any] = {"poll_interval": 0.02, "rescan_interval": 0.2, "rotate_wait": 0.3}


class Recorder:
    """The tailer's log, kept in memory: a failure prints it (steps race a real thread, so
    a failing example may not fail again when replayed)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.t0 = time.monotonic()

    def note(self, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.t0:8.3f} {text}")

    def _log(self, event: str, *_: Any, **kw: Any) -> None:
        self.note(f"{event} {kw}")

    info = warning = error = exception = debug = _log

    def tail(self, n: int = 80) -> str:
        return "\n".join(self.lines[-n:])


class TailerMachine(RuleBasedStateMachine):
    """Every line is unique; the model knows which lines the tailer may have lost."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="shipper-stateful-"))
        self.root = self.tmp / "logs"
        self.root.mkdir()
        self.log = self.root / "app.log"
        self.rec = Recorder()
        self.h = Harness(self.root, self.tmp / "state", log=self.rec)
        self.h.start(**TAIL)
        self.seq = 0
        self.rotations = 0
        self.written: set[bytes] = set()
        self.excused: set[bytes] = set()  # written before a crash and not delivered by then
        self.steps: list[str] = []  # for failure messages (timing makes replays differ)

    def _step(self, name: str) -> None:
        self.steps.append(name)
        self.rec.note(f"--- {name} (delivered {len(self.h.sink.lines)})")

    def teardown(self) -> None:
        self.h.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------
    def _append(self, path: Path, n: int, width: int) -> None:
        lines = [
            b"%08d %s" % (i, b"y" * (i * 7 % (width + 1))) for i in range(self.seq, self.seq + n)
        ]
        self.seq += n
        with path.open("ab") as f:
            f.write(b"".join(ln + b"\n" for ln in lines))
        self.written.update(lines)

    def _rotated(self) -> list[Path]:
        return sorted(self.root.glob("app.log.*"))

    def _next_rotated(self) -> Path:
        self.rotations += 1
        return self.root / f"app.log.{self.rotations}"

    def _wait_adopted(self) -> None:
        """Wait until the (re)started tailer has looked at every file that has bytes: opened
        it, or found it unchanged since it was closed (nothing in it to read)."""

        def adopted() -> bool:
            t = self.h.tailer
            assert t is not None
            want = set()
            for p in self.root.glob("app.log*"):
                try:
                    st_ = p.stat()
                except FileNotFoundError:
                    continue
                if st_.st_size:
                    want.add(f"{st_.st_dev}:{st_.st_ino}")
            return want <= t.looked_at()

        self.h.wait(adopted)

    # -- rules --------------------------------------------------------------------------
    @rule(n=st.integers(1, 40), width=st.integers(0, 120))
    def write(self, n: int, width: int) -> None:
        self._step(f"write({n}, {width})")
        self._append(self.log, n, width)

    @precondition(lambda self: self.log.exists())
    @rule()
    def rename_rotate(self) -> None:
        self._step("rename_rotate()")
        os.rename(self.log, self._next_rotated())

    @precondition(lambda self: self.log.exists())
    @rule()
    def copytruncate(self) -> None:
        self._step("copytruncate()")
        shutil.copyfile(self.log, self._next_rotated())
        with self.log.open("r+b") as f:
            f.truncate(0)

    @precondition(lambda self: bool(self._rotated()))
    @rule(data=st.data())
    def delete_rotated(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(self._rotated()))
        self._step(f"delete_rotated({victim.name})")
        victim.unlink()

    @precondition(lambda self: self.log.exists())
    @rule(n=st.integers(1, 40))
    def delete_and_recreate(self, n: int) -> None:
        self._step(f"delete_and_recreate({n})")
        self.log.unlink()
        self._append(self.log, n, 60)

    @rule()
    def restart(self) -> None:
        self._step("restart()")
        self.h.stop()
        self.h.start(**TAIL)

    @rule(n=st.integers(0, 60))
    def kill(self, n: int) -> None:
        """Write ``n`` lines and crash at once; a restart may skip what was not read."""
        self._step(f"kill({n})")
        if n:
            self._append(self.log, n, 80)
        self.h.crash()
        self.h.start(**TAIL)
        self._wait_adopted()
        self.excused |= self.written - set(self.h.sink.lines)

    # -- invariants ---------------------------------------------------------------------
    @invariant()
    def every_line_at_most_once_and_none_lost_unless_crashed(self) -> None:
        want = self.written - self.excused
        try:
            self.h.wait(lambda: want <= set(self.h.sink.lines))
        except AssertionError as exc:
            lost = sorted(want - set(self.h.sink.lines))
            raise AssertionError(
                f"{len(lost)} lines lost: {lost[:3]} after {self.steps}\n{self.rec.tail()}"
            ) from exc
        self.h.settle()  # and a few rounds more: nothing read twice arrives late
        got = self.h.sink.lines
        twice = sorted(ln for ln, k in Counter(got).items() if k > 1)
        assert not twice, (
            f"{len(twice)} lines delivered twice: {twice[:5]} after {self.steps}\n{self.rec.tail()}"
        )
        assert set(got) <= self.written, f"{set(got) - self.written} after {self.steps}"


TestTailerStateful = TailerMachine.TestCase
TestTailerStateful.settings = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # Steps race a real thread, so a saved failing example does not replay the same way
    # ("inconsistent data generation"); every run explores fresh examples instead.
    database=None,
)
