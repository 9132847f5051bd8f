"""Exceptions that cross module boundaries."""

from __future__ import annotations

__all__ = ["ConfigError", "RegistryLockedError", "ShipperError"]


class ShipperError(Exception):
    """Base class for errors the daemon reports and exits on."""


class ConfigError(ShipperError):
    """The configuration is invalid; ``problems`` holds one ``key.path: message`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class RegistryLockedError(ShipperError):
    """Another process holds the registry's lock: two owners would send lines twice."""

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(
            f"registry {path} is in use by {holder} (lock file {path}.lock); "
            "one shipper per registry.path"
        )
        self.path = path
        self.pid = pid
