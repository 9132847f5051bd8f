"""The bench session's settings, parsed once from the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Options"]


@dataclass(frozen=True)
class Options:
    """Everything a scenario needs to know besides the broker."""

    repo: Path
    tmp: Path
    lines: int
    reps: int
    partitions: int
    programs: tuple[str, ...]
    timeout: float
    poll: float
    latency_rate: float
    duration: float
    stall_rate: float
    stall_before: float
    stall: float
    stall_after: float
    warmup: bool = True
    footprint_step: float = 30.0
    footprint_settle: float = 3.0
    footprint_rates: tuple[int, ...] = (0, 100, 1_000, 10_000, 50_000)
    record_format: str = "raw"  # the shipper's kafka.format
