"""The only place that reads YAML or the environment: load, interpolate and validate once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from shipper.errors import ConfigError
from shipper.kafka.encode import CODEC_MODULES, LINE_ROOM, codec_installed

__all__ = [
    "Config",
    "InputConfig",
    "KafkaConfig",
    "LogConfig",
    "MetricsConfig",
    "MultilineConfig",
    "QueueConfig",
    "RegistryConfig",
    "ShutdownConfig",
    "TailConfig",
    "load",
    "parse_duration",
    "parse_size",
]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_size(value: object) -> int:
    """Return a byte count from an int or a string like ``64MiB``, ``512KiB``, ``1GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 64MiB, not a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").lower()
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"invalid size {value!r}: use a number with B, KiB, MiB or GiB")


def parse_duration(value: object) -> float:
    """Return seconds from a number or a string like ``250ms``, ``5s``, ``2m``, ``1h``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"invalid duration {value!r}: use a number with ms, s, m or h")


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class MultilineConfig(_Model):
    """Join continuation lines (stack traces) into one record."""

    start_pattern: str
    max_lines: int = Field(500, ge=1)
    timeout: Duration = 1.0

    @field_validator("start_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v.encode())
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return v


class InputConfig(_Model):
    """One group of files to tail."""

    paths: list[str] = Field(min_length=1)
    exclude: list[str] = Field(default_factory=list)
    start_at: Literal["end", "beginning"] = "end"
    max_line_bytes: Size = Field(1024 * 1024, ge=16)
    long_lines: Literal["truncate", "drop"] = "truncate"
    follow_symlinks: bool = False
    ignore_older: Duration | None = None
    close_inactive: Duration = 300.0
    multiline: MultilineConfig | None = None

    @field_validator("paths")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("a path pattern cannot be empty")
            if not os.path.isabs(p):
                raise ValueError(f"path pattern {p!r} must be absolute")
        return v


class TailConfig(_Model):
    """How the tailer discovers and reads files."""

    rescan_interval: Duration = Field(10.0, gt=0)
    poll_interval: Duration = Field(1.0, gt=0)
    read_chunk: Size = Field(1024 * 1024, ge=4096)
    read_budget: Size = Field(4 * 1024 * 1024, ge=4096)
    rotate_wait: Duration = 5.0
    max_open_files: int = Field(1024, ge=4)
    fingerprint_bytes: int = Field(1024, ge=16, le=65536)


class QueueConfig(_Model):
    """The bounded in-memory queue between tailer and sender."""

    max_lines: int = Field(100_000, ge=1)
    max_bytes: Size = Field(64 * 1024 * 1024, ge=1024)
    when_full: Literal["drop_newest", "drop_oldest"] = "drop_newest"
    stall_timeout: Duration = 5.0


class KafkaConfig(_Model):
    """Where and how lines are produced."""

    bootstrap_servers: list[str] = Field(min_length=1)
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    client_id: str = "shipper"
    partition_by: Literal["none", "file", "host"] = "none"
    compression: Literal["none", "gzip", "lz4", "zstd", "snappy"] = "none"
    linger: Duration = 0.005
    batch_max_bytes: Size = Field(1000 * 1024, ge=1024, le=64 * 1024 * 1024)
    batch_max_lines: int = Field(20_000, ge=1)
    max_in_flight_bytes: Size = Field(1024 * 1024, ge=64 * 1024)
    unavailable_timeout: Duration = 5.0
    metadata_refresh: Duration = Field(30.0, gt=0)
    connect_backoff_max: Duration = Field(5.0, gt=0)

    @field_validator("compression")
    @classmethod
    def _codec_installed(cls, v: str) -> str:
        if not codec_installed(v):
            raise ValueError(
                f"compression {v!r} needs the Python module {CODEC_MODULES[v]!r}, which is not "
                f"installed (pip install 'shipper[{v}]')"
            )
        return v

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, v: list[str]) -> list[str]:
        for s in v:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{s!r} is not host:port")
        return v


class RegistryConfig(_Model):
    """Where file positions are kept across restarts."""

    path: str = "/var/lib/shipper/registry.json"
    reserve: Size = Field(4 * 1024 * 1024, ge=0)
    forget_after: Duration = 24 * 3600.0


class MetricsConfig(_Model):
    """The /metrics and /health HTTP endpoint."""

    enabled: bool = True
    listen: str = "127.0.0.1:9108"

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or int(port) >= 65536:
            raise ValueError(f"{v!r} is not host:port")
        return v


class LogConfig(_Model):
    """Our own logs: JSON to stdout by default."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    stats_interval: Duration = 60.0


class ShutdownConfig(_Model):
    """How long the sender may drain the queue on SIGTERM."""

    drain_timeout: Duration = 5.0


class Config(_Model):
    """The whole validated configuration; components get only their own slice."""

    inputs: list[InputConfig] = Field(min_length=1)
    tail: TailConfig = TailConfig()
    queue: QueueConfig = QueueConfig()
    kafka: KafkaConfig
    registry: RegistryConfig = RegistryConfig()
    metrics: MetricsConfig = MetricsConfig()
    log: LogConfig = LogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()

    @model_validator(mode="after")
    def _batch_fits_queue(self) -> Config:
        if self.kafka.batch_max_bytes > self.queue.max_bytes:
            raise ValueError("kafka.batch_max_bytes must not exceed queue.max_bytes")
        return self


def _interpolate(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _ENV_RE.sub(sub, node)
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), errors)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}.{i}", errors) for i, v in enumerate(node)]
    return node


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def parse(text: str, env: Mapping[str, str] | None = None, source: str = "<config>") -> Config:
    """Validate YAML text into a Config or raise ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{source}: invalid YAML{where}: {problem}"]) from None
    if raw is None:
        raise ConfigError([f"{source}: the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(raw).__name__}"])
    errors: list[str] = []
    raw = _interpolate(raw, os.environ if env is None else env, "", errors)
    if errors:
        raise ConfigError(errors)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            problems.append(f"{_loc(err['loc'])}: {msg}")
        raise ConfigError(problems) from None
    return _derive(cfg)


def _derive(cfg: Config) -> Config:
    """Values that follow from others, computed once: a line must fit in one batch the
    broker accepts, so ``long_lines`` applies at ``batch_max_bytes - LINE_ROOM``."""
    limit = cfg.kafka.batch_max_bytes - LINE_ROOM
    if all(i.max_line_bytes <= limit for i in cfg.inputs):
        return cfg
    inputs = [
        i.model_copy(update={"max_line_bytes": min(i.max_line_bytes, limit)}) for i in cfg.inputs
    ]
    return cfg.model_copy(update={"inputs": inputs})


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    return parse(text, env, str(p))
