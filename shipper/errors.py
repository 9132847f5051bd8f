"""Exceptions that cross module boundaries."""

from __future__ import annotations

__all__ = ["ConfigError", "ShipperError"]


class ShipperError(Exception):
    """Base class for errors the daemon reports and exits on."""


class ConfigError(ShipperError):
    """The configuration is invalid; ``problems`` holds one ``key.path: message`` per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
