"""Process helpers: free ports, /proc and wait4 accounting, polite termination."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

__all__ = ["Usage", "free_port", "proc_usage", "reap", "rss_kib", "stop", "tail"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user+system) and peak resident set size in KiB."""

    cpu_s: float
    peak_rss_kib: int


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int | None:
    """Current resident set size of pid in KiB (None if it is gone)."""
    try:
        return _status_kib(pid, "VmRSS")
    except (OSError, ValueError):
        return None


def proc_usage(pid: int) -> Usage | None:
    """CPU seconds and VmHWM of a live process from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return Usage(cpu, _status_kib(pid, "VmHWM"))
    except (OSError, ValueError, IndexError):
        return None


def reap(proc: subprocess.Popen[bytes], block: bool = False) -> Usage | None:
    """wait4 the child: its rusage once it has exited (sets returncode), else None."""
    if proc.returncode is not None:
        return None
    try:
        pid, status, ru = os.wait4(proc.pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Usage(ru.ru_utime + ru.ru_stime, ru.ru_maxrss)


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> Usage | None:
    """SIGTERM, then SIGKILL after timeout; return the child's rusage if we reaped it."""
    if proc.returncode is not None:
        return None
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        usage = reap(proc)
        if proc.returncode is not None:
            return usage
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    return reap(proc, block=True)


def tail(path: str | os.PathLike[str], limit: int = 1500) -> str:
    """The last `limit` characters of a text file ('' if unreadable)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
