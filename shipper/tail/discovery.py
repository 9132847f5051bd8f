"""Which files to tail: glob matching, periodic rescans, and thin watchdog handlers.

Watchdog handlers run on the observer's thread and only record which path changed; the
tailer's own thread does every stat and read. Directories that cannot be watched (inotify
limits, or a directory that does not exist yet) are covered by the poll and the rescan,
and counted.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
from collections.abc import Iterable

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
from watchdog.observers.api import BaseObserver

__all__ = ["ChangeSet", "Matcher", "Watcher", "base_dir", "glob_to_regex"]

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


class Matcher:
    """Include and exclude globs of one input."""

    def __init__(self, paths: Iterable[str], exclude: Iterable[str]) -> None:
        self.patterns = list(paths)
        self._include = [glob_to_regex(p) for p in self.patterns]
        self._exclude_full = [glob_to_regex(p) for p in exclude if "/" in p]
        self._exclude_base = [glob_to_regex(p) for p in exclude if "/" not in p]
        self.roots = sorted({base_dir(p)[0] for p in self.patterns})

    def matches(self, path: str) -> bool:
        """True if ``path`` matches an include glob and no exclude glob."""
        if not any(r.match(path) for r in self._include):
            return False
        if any(r.match(path) for r in self._exclude_full):
            return False
        name = os.path.basename(path)
        return not any(r.match(name) for r in self._exclude_base)

    def scan(self) -> set[str]:
        """Expand the include globs now; return matching regular-file paths (or links)."""
        found: set[str] = set()
        for p in self.patterns:
            for hit in glob.iglob(p, recursive=True):
                if self.matches(hit):
                    found.add(hit)
        return found

    def inside_roots(self, real: str) -> bool:
        """True if the resolved path ``real`` lies under one of this input's root dirs."""
        for root in self.roots:
            r = os.path.realpath(root)
            if real == r or real.startswith(r.rstrip("/") + "/"):
                return True
        return False


class ChangeSet:
    """Paths reported changed by watchdog, handed from the observer thread to the tailer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self.event = threading.Event()

    def add(self, *paths: str) -> None:
        """Record changed paths and wake the tailer."""
        with self._lock:
            self._paths.update(paths)
        self.event.set()

    def drain(self) -> set[str]:
        """Return and clear the changed paths."""
        with self._lock:
            out, self._paths = self._paths, set()
        self.event.clear()
        return out


class _Handler(FileSystemEventHandler):
    """Only records the path; never reads or stats (that is the tailer's job)."""

    def __init__(self, changes: ChangeSet) -> None:
        self._changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        dest = getattr(event, "dest_path", "")
        src = event.src_path if isinstance(event.src_path, str) else os.fsdecode(event.src_path)
        if dest:
            self._changes.add(src, dest if isinstance(dest, str) else os.fsdecode(dest))
        else:
            self._changes.add(src)


class Watcher:
    """Owns the watchdog observer and the set of directories under watch."""

    def __init__(self, changes: ChangeSet) -> None:
        self._changes = changes
        self._observer: BaseObserver | None = None
        self._handler = _Handler(changes)
        self._watched: dict[str, bool] = {}
        self.failed: dict[str, str] = {}

    def start(self) -> None:
        """Start the observer threads; call before ``ensure``.

        watchdog's observer starts a thread as it is built, so it is built here and not in
        the constructor: threads start only in ``start`` (the daemon masks signals there).
        """
        logging.getLogger("watchdog.observers.inotify").addFilter(_not_stop_race)  # once
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()

    def ensure(self, directory: str, recursive: bool) -> bool:
        """Watch ``directory`` if it exists and is not watched yet; False if it cannot be."""
        if self._watched.get(directory) is not None and (self._watched[directory] or not recursive):
            return True
        if self._observer is None:
            raise RuntimeError("Watcher.ensure before Watcher.start")
        if not os.path.isdir(directory):
            return False
        try:
            self._observer.schedule(
                self._handler, directory, recursive=recursive, event_filter=_EVENTS
            )
        except OSError as exc:  # inotify watch limit, permissions: poll covers it
            self.failed[directory] = exc.strerror or str(exc)
            return False
        self._watched[directory] = recursive
        self.failed.pop(directory, None)
        return True

    @property
    def watched(self) -> int:
        """Number of directories under watch."""
        return len(self._watched)

    def stop(self) -> None:
        """Stop and join the observer thread."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
