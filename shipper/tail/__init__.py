"""Files to lines: discovery, following, line splitting and the position registry."""

from __future__ import annotations

from shipper.tail.registry import Registry
from shipper.tail.tailer import Tailer

__all__ = ["Registry", "Tailer"]
