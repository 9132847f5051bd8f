"""Which files to tail: glob matching, directory scans, and thin watchdog handlers.

Watchdog handlers run on the observer's thread and only record which path changed (and
whether it was created, deleted or moved away); the tailer's own thread does every stat and
read. A scan walks the directories a glob can reach with ``os.scandir`` and reports what it
could not list. Directories that cannot be watched (inotify limits, permissions, or a
directory that does not exist yet) are reported too: the tailer polls them instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

try:  # Linux: inotify, read through our own coalescing reader
    from watchdog.observers.inotify import InotifyEmitter
    from watchdog.observers.inotify_c import InotifyFD
except ImportError:  # pragma: no cover  # another platform: watchdog's default observer
    InotifyFD = None  # type: ignore[assignment,misc]

__all__ = ["ChangeSet", "Changes", "Matcher", "Scan", "Watcher", "base_dir", "glob_to_regex"]

_MAGIC = re.compile(r"[*?\[]")
# The events that can mean new bytes or a new name. Not opened / closed-without-writing: the
# tailer's own reads cause those, and waking it on them would make it wake itself for ever.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]

_STOP_RACE = "InotifyEmitter.queue_events() called when the thread is inactive"


def _not_stop_race(record: logging.LogRecord) -> bool:
    """Drop the one error watchdog logs when an emitter is stopped between two reads.

    watchdog's emitter loop checks "keep running", then reads; ``stop()`` from another
    thread can land in between, and the read then logs this error although nothing is
    wrong: the emitter was told to stop and does. unschedule_all before stop has the
    same race, so the message is filtered (and only this one).
    """
    return record.msg != _STOP_RACE


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a shell glob with ``**`` (any number of directories) to a full-match regex."""
    out = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z")


def base_dir(pattern: str) -> tuple[str, bool]:
    """Return the deepest directory of ``pattern`` without wildcards, and whether the
    rest of the pattern reaches into subdirectories (so the watch must be recursive)."""
    parts = pattern.split("/")
    fixed = []
    for p in parts[:-1]:
        if _MAGIC.search(p):
            break
        fixed.append(p)
    root = "/".join(fixed) or "/"
    rest = pattern[len(root) :].lstrip("/")
    return root, "/" in rest or "**" in rest


@dataclass
class Scan:
    """What one scan found: matching paths (files, links and anything else that is not a
    directory the glob walks through), directories it could not list (path -> error),
    directories it did list, and directory links that lead back into the walk (loops)."""

    paths: set[str] = field(default_factory=set)
    unreadable: dict[str, str] = field(default_factory=dict)
    listed: set[str] = field(default_factory=set)
    loops: set[str] = field(default_factory=set)


def _join(d: str, name: str) -> str:
    return d + name if d.endswith("/") else f"{d}/{name}"


class _Pattern:
    """One include glob, split at its wildcard-free root into components to walk."""

    def __init__(self, pattern: str) -> None:
        self.root, _ = base_dir(pattern)
        self.full = glob_to_regex(pattern)
        rest = pattern[len(self.root) :].lstrip("/")
        # A literal name, a compiled component glob, or None for ** (any depth from here on).
        self.parts: list[str | re.Pattern[str] | None] = []
        # Under **, a file matches when its name matches ``leaf`` (None: test the full path).
        self.leaf: re.Pattern[str] | None = None
        comps = rest.split("/")
        for k, comp in enumerate(comps):
            if "**" in comp:
                self.parts.append(None)
                tail = comps[k + 1 :]
                if comp == "**" and not tail:
                    self.leaf = re.compile(r".*\Z", re.DOTALL)
                elif comp == "**" and len(tail) == 1 and "**" not in tail[0]:
                    self.leaf = glob_to_regex(tail[0])
                break
            self.parts.append(glob_to_regex(comp) if _MAGIC.search(comp) else comp)


class Matcher:
    """Include and exclude globs of one input."""

    def __init__(self, paths: Iterable[str], exclude: Iterable[str]) -> None:
        self.patterns = list(paths)
        self._include = [glob_to_regex(p) for p in self.patterns]
        self._walks = [_Pattern(p) for p in self.patterns]
        self._exclude_full = [glob_to_regex(p) for p in exclude if "/" in p]
        self._exclude_base = [glob_to_regex(p) for p in exclude if "/" not in p]
        self.roots = sorted({base_dir(p)[0] for p in self.patterns})

    def matches(self, path: str) -> bool:
        """True if ``path`` matches an include glob and no exclude glob."""
        return any(r.match(path) for r in self._include) and not self._excluded(path)

    def _excluded(self, path: str) -> bool:
        if not (self._exclude_full or self._exclude_base):
            return False
        if any(r.match(path) for r in self._exclude_full):
            return True
        name = os.path.basename(path)
        return any(r.match(name) for r in self._exclude_base)

    def scan(self, out: Scan | None = None) -> Scan:
        """Walk the directories the include globs reach; return matching paths and the
        directories that could not be listed."""
        out = out if out is not None else Scan()
        for walk in self._walks:
            self._walk(walk, out)
        return out

    def _walk(self, walk: _Pattern, out: Scan) -> None:
        """Visit the directories the glob reaches, matching one component per level (a
        path that matches every component matches the glob); ``**`` walks every directory
        below, following links to directories once each."""
        last = len(walk.parts) - 1
        followed: set[tuple[int, int]] = set()  # directory links followed under **
        todo: list[tuple[str, int]] = [(walk.root, 0)]
        while todo:
            d, i = todo.pop()
            part = walk.parts[i]
            if isinstance(part, str):  # a literal name: no need to list the directory
                path = _join(d, part)
                if i < last:
                    if os.path.isdir(path):
                        todo.append((path, i + 1))
                elif os.path.lexists(path) and not self._excluded(path):
                    out.paths.add(path)
            elif part is None:
                todo.extend((sub, i) for sub in self._deep(walk, d, out, followed))
            else:
                for entry in self._list(d, out):
                    if part.match(entry.name):
                        path = _join(d, entry.name)
                        if i < last:
                            if self._is_dir(entry):
                                todo.append((path, i + 1))
                        elif not self._excluded(path):
                            out.paths.add(path)

    def _deep(self, walk: _Pattern, d: str, out: Scan, followed: set[tuple[int, int]]) -> list[str]:
        """Under ``**``: the matching files of ``d``; return the directories to walk next.

        A link to a directory already followed is a loop: reported, not walked (a link back
        to an ancestor is walked once through, then recognised)."""
        leaf = walk.leaf
        subs = []
        for entry in self._list(d, out):
            path = _join(d, entry.name)
            if not self._is_dir(entry):
                hit = leaf.match(entry.name) if leaf is not None else walk.full.match(path)
                if hit and not self._excluded(path):
                    out.paths.add(path)
            elif not entry.is_symlink() or self._first_visit(path, followed):
                subs.append(path)
            else:
                out.loops.add(path)
        return subs

    @staticmethod
    def _list(d: str, out: Scan) -> list[os.DirEntry[str]]:
        """The entries of ``d``; a directory that cannot be listed is reported in ``out``."""
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            out.unreadable[d] = exc.strerror or str(exc)
            return []
        out.listed.add(d)
        return entries

    @staticmethod
    def _is_dir(entry: os.DirEntry[str]) -> bool:
        try:
            return entry.is_dir()
        except OSError:
            return False

    @staticmethod
    def _first_visit(path: str, visited: set[tuple[int, int]]) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        ident = (st.st_dev, st.st_ino)
        if ident in visited:
            return False
        visited.add(ident)
        return True

    def inside_roots(self, real: str) -> bool:
        """True if the resolved path ``real`` lies under one of this input's root dirs."""
        for root in self.roots:
            r = os.path.realpath(root)
            if real == r or real.startswith(r.rstrip("/") + "/"):
                return True
        return False


class Changes(NamedTuple):
    """What watchdog reported since the last drain: every path touched, and among them the
    ones created, deleted, and moved away."""

    paths: set[str]
    created: set[str]
    deleted: set[str]
    moved_away: set[str]


class ChangeSet:
    """Paths reported changed by watchdog, handed from the observer thread to the tailer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fresh()
        self.event = threading.Event()

    def _fresh(self) -> None:
        self._paths: set[str] = set()
        self._created: set[str] = set()
        self._deleted: set[str] = set()
        self._moved: set[str] = set()

    def add(self, *paths: str) -> None:
        """Record changed paths and wake the tailer."""
        with self._lock:
            self._paths.update(paths)
        self.event.set()

    def record(self, kind: str, src: str, dest: str = "") -> None:
        """Record one watchdog event (``created``, ``deleted``, ``moved``, ...)."""
        with self._lock:
            self._paths.add(src)
            if dest:
                self._paths.add(dest)
            if kind == "created":
                self._created.add(src)
            elif kind == "deleted":
                self._deleted.add(src)
            elif kind == "moved":
                self._moved.add(src)
                self._created.add(dest)
        self.event.set()

    def drain(self) -> Changes:
        """Return and clear what was recorded."""
        with self._lock:
            out = Changes(self._paths, self._created, self._deleted, self._moved)
            self._fresh()
        self.event.clear()
        return out


def _text(path: str | bytes) -> str:
    return path if isinstance(path, str) else os.fsdecode(path)


class _Handler(FileSystemEventHandler):
    """Only records the path and the kind of event; never reads or stats (that is the
    tailer's job)."""

    def __init__(self, changes: ChangeSet) -> None:
        self._changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type not in ("created", "moved"):
            self._changes.add(_text(event.src_path))
            return
        dest = getattr(event, "dest_path", "")
        self._changes.record(event.event_type, _text(event.src_path), _text(dest) if dest else "")


if InotifyFD is not None:

    class _CoalescingFD(InotifyFD):
        """watchdog's inotify reader thread, resting ``coalesce`` seconds after each read
        that returned events. Meanwhile the kernel merges repeats of the last queued event
        (a file written again and again yields one IN_MODIFY, not one per write), so one
        read, one event and one tailer round serve every write of the pause: at 1,000 writes
        a second and 5 ms, at most 200 wake-ups instead of 1,000 in each of watchdog's
        three threads and ours. Events are delayed by at most ``coalesce``."""

        def __init__(self, coalesce: float) -> None:
            super().__init__()
            self.name = "shipper-inotify"
            self._coalesce = coalesce

        def run(self) -> None:
            while self.should_keep_running():
                events = self.read_events()
                for event in events:
                    self.handle_event(event)
                if events and self._coalesce > 0:
                    self.stopped_event.wait(self._coalesce)

    class _InotifyObserver(BaseObserver):
        """watchdog's inotify observer with the coalescing reader."""

        def __init__(self, coalesce: float) -> None:
            self._inotify_fd = _CoalescingFD(coalesce)
            self._inotify_fd.daemon = True
            self._inotify_fd.start()
            super().__init__(InotifyEmitter, inotify_fd=self._inotify_fd)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self._inotify_fd.stop()
            self._inotify_fd.join()


def _observer(coalesce: float) -> BaseObserver:
    """A new (not started) observer whose events come at most ``coalesce`` s late."""
    if InotifyFD is None:  # pragma: no cover
        return Observer()
    return _InotifyObserver(coalesce)


class Watcher:
    """Owns the watchdog observer and the set of directories under watch.

    When the observer cannot be created (the inotify instance limit) or a directory cannot
    be watched (the watch limit, permissions), ``failed`` says why; the tailer polls those
    directories, and every ``ensure`` tries again.
    """

    def __init__(self, changes: ChangeSet, coalesce: float = 0.0) -> None:
        self._changes = changes
        self._coalesce = coalesce
        self._observer: BaseObserver | None = None
        self._handler = _Handler(changes)
        self._watched: dict[str, tuple[bool, ObservedWatch]] = {}
        self._started = False
        self.failed: dict[str, str] = {}
        self.unavailable: str | None = None  # why there is no observer at all

    def start(self) -> None:
        """Start the observer threads; call before ``ensure``.

        watchdog's observer starts a thread as it is built, so it is built here and not in
        the constructor: threads start only in ``start`` (the daemon masks signals there).
        """
        self._started = True
        logging.getLogger("watchdog.observers.inotify").addFilter(_not_stop_race)  # once
        # A directory made and filled at once under a recursive watch can be added twice by
        # watchdog, which then warns and reuses the watch: harmless, and not for stderr.
        warnings.filterwarnings(
            "ignore", message="Callback with id .* already exists", category=RuntimeWarning
        )
        self._new_observer()

    def _new_observer(self) -> bool:
        try:
            observer = _observer(self._coalesce)
            observer.name = "shipper-watcher"
            observer.daemon = True
            observer.start()
        except OSError as exc:  # the inotify instance limit: poll instead
            self.unavailable = exc.strerror or str(exc)
            return False
        self._observer = observer
        self.unavailable = None
        return True

    @property
    def thread(self) -> threading.Thread | None:
        """The observer thread (for supervision)."""
        return self._observer

    def ensure(self, directory: str, recursive: bool) -> bool:
        """Watch ``directory`` if it exists and is not watched yet; False if it cannot be."""
        if not self._started:
            raise RuntimeError("Watcher.ensure before Watcher.start")
        known = self._watched.get(directory)
        if known is not None and (known[0] or not recursive):
            if self._alive(known[1]):
                return True
            # Its emitter stopped (the directory was deleted): watch it again if it is back.
            self._drop(directory)
        if not os.path.isdir(directory):
            return False
        if self._observer is None and not self._new_observer():
            self.failed[directory] = f"no inotify: {self.unavailable}"
            return False
        assert self._observer is not None
        try:
            watch = self._observer.schedule(
                self._handler, directory, recursive=recursive, event_filter=_EVENTS
            )
        except OSError as exc:  # inotify watch limit, permissions: poll covers it
            self.failed[directory] = exc.strerror or str(exc)
            return False
        if known is not None:
            self._drop(directory)
        self._watched[directory] = (recursive, watch)
        self.failed.pop(directory, None)
        return True

    def _alive(self, watch: ObservedWatch) -> bool:
        observer = self._observer
        if observer is None:
            return False
        return any(e.watch == watch and e.is_alive() for e in list(observer.emitters))

    def _drop(self, directory: str) -> None:
        _, watch = self._watched.pop(directory)
        if self._observer is not None:
            with contextlib.suppress(KeyError, OSError):  # already gone with its emitter
                self._observer.unschedule(watch)

    def watching(self, directory: str) -> bool:
        """True while ``directory`` is under watch."""
        return directory in self._watched

    @property
    def watched(self) -> int:
        """Number of directories under watch."""
        return len(self._watched)

    def stop(self) -> None:
        """Stop and join the observer thread."""
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
