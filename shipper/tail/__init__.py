"""Files to lines: discovery (``discovery``), identity (``identity``), one open file
(``reader``), line splitting (``lines``, ``multiline``), positions (``registry``) and the
thread that schedules them (``tailer``)."""

from __future__ import annotations

from shipper.tail.registry import Registry
from shipper.tail.tailer import Tailer

__all__ = ["Registry", "Tailer"]
