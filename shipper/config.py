"""The only place that reads the config file or the environment: load, interpolate, validate
once, and derive what follows from it.

Each section is a frozen dataclass whose fields carry a check (type, unit, range, choices).
``load`` reports every problem at once, one ``key.path: message`` each, and never raises
anything but ``ConfigError``: whatever the input (huge numbers, NaN, deep nesting, alias
bombs, binary), validation is bounded in time and memory.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from shipper.errors import ConfigError
from shipper.kafka.encode import CODEC_MODULES, LINE_ROOM, codec_installed

__all__ = [
    "KUBERNETES_ENV",
    "Config",
    "InputConfig",
    "KafkaConfig",
    "LogConfig",
    "MetricsConfig",
    "MultilineConfig",
    "QueueConfig",
    "RegistryConfig",
    "Route",
    "SaslConfig",
    "Secret",
    "SecurityConfig",
    "ShutdownConfig",
    "TailConfig",
    "TlsConfig",
    "build",
    "load",
    "parse",
    "parse_duration",
    "parse_size",
]

#: Largest config file accepted (checked before parsing).
MAX_FILE_BYTES = 1024 * 1024
#: Most YAML aliases (``*name``) and deepest nesting accepted (checked before expansion).
MAX_ALIASES = 64
MAX_DEPTH = 32

#: Downward API variables the example manifests set, and the envelope field each becomes.
KUBERNETES_ENV: dict[str, str] = {
    "KUBERNETES_POD_NAME": "pod_name",
    "KUBERNETES_NAMESPACE": "namespace",
    "KUBERNETES_NODE_NAME": "node_name",
    "KUBERNETES_POD_UID": "pod_uid",
    "KUBERNETES_CONTAINER_NAME": "container_name",
}

KiB, MiB, GiB = 1024, 1024**2, 1024**3
_SIZE_RE = re.compile(r"^\s*(\d{1,15}(?:\.\d{1,9})?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "ki": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "mi": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "gi": GiB,
}
_DURATION_RE = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_FIELD_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")


# -- values ------------------------------------------------------------------------------
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
    raise ValueError(f"invalid size {_show(value)}: use a number with B, KiB, MiB or GiB")


def parse_duration(value: object) -> float:
    """Return seconds from a number or a string like ``250ms``, ``5s``, ``2m``, ``1h``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 5s, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: it must be finite")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"invalid duration {_show(value)}: use a number with ms, s, m or h")


def _show(value: object) -> str:
    """A short, safe rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Secret:
    """A password or key password: never shown in logs, errors, metrics or health."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Interpolated(str):
    """A string that came (at least in part) from ``${VAR}``: not a literal in the file."""

    __slots__ = ()


# -- checks: each turns a raw YAML value into a typed one, or records a problem ------------
Errors = list[str]
Check = Callable[[Any, str, Errors], Any]


class _InvalidValueError(Exception):
    """One problem with one value (its message, without the key path)."""


def _checked(fn: Callable[[Any], Any]) -> Check:
    def check(value: Any, path: str, errors: Errors) -> Any:
        try:
            return fn(value)
        except (_InvalidValueError, ValueError) as e:
            errors.append(f"{path}: {e}")
            return None

    return check


def _bounded(v: float, lo: float | None, hi: float | None, show: Callable[[float], str]) -> None:
    if lo is not None and v < lo:
        raise _InvalidValueError(f"must be at least {show(lo)} (got {show(v)})")
    if hi is not None and v > hi:
        raise _InvalidValueError(f"must be at most {show(hi)} (got {show(v)})")


def _fmt_size(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{int(n // size)}{unit}"
    return f"{int(n)}B"


def _fmt_duration(s: float) -> str:
    if s and s < 1:
        return f"{round(s * 1000, 3):g}ms"
    return f"{s:g}s"


def size(lo: int = 0, hi: int | None = None) -> Check:
    """A byte count, ``lo <= n <= hi``."""

    def fn(v: Any) -> int:
        n = parse_size(v)
        _bounded(n, lo, hi, _fmt_size)
        return n

    return _checked(fn)


def duration(lo: float = 0.0, hi: float | None = None, above: float | None = None) -> Check:
    """Seconds, finite, ``lo <= s <= hi`` (and ``s > above`` when given)."""

    def fn(v: Any) -> float:
        s = parse_duration(v)
        if above is not None and s <= above:
            raise _InvalidValueError(f"must be more than {_fmt_duration(above)}")
        _bounded(s, lo, hi, _fmt_duration)
        return s

    return _checked(fn)


def integer(lo: int, hi: int) -> Check:
    """A whole number, ``lo <= n <= hi``."""

    def fn(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _InvalidValueError(f"expected a whole number, got {_show(v)}")
        _bounded(v, lo, hi, lambda x: f"{int(x)}")
        return v

    return _checked(fn)


def boolean() -> Check:
    """true or false."""

    def fn(v: Any) -> bool:
        if not isinstance(v, bool):
            raise _InvalidValueError(f"expected true or false, got {_show(v)}")
        return v

    return _checked(fn)


def choice(*names: str) -> Check:
    """One of ``names``."""

    def fn(v: Any) -> str:
        if not isinstance(v, str) or v not in names:
            raise _InvalidValueError(f"expected one of {', '.join(names)}; got {_show(v)}")
        return v

    return _checked(fn)


def text(
    *, min_len: int = 0, max_len: int = 4096, test: Callable[[str], str | None] | None = None
) -> Check:
    """A string; ``test`` returns a problem or None."""

    def fn(v: Any) -> str:
        if not isinstance(v, str):
            raise _InvalidValueError(f"expected a string, got {_show(v)}")
        if len(v) < min_len:
            raise _InvalidValueError(
                "must not be empty" if min_len == 1 else f"at least {min_len} chars"
            )
        if len(v) > max_len:
            raise _InvalidValueError(f"must be at most {max_len} characters")
        problem = test(v) if test is not None else None
        if problem:
            raise _InvalidValueError(problem)
        return str(v)

    return _checked(fn)


def optional(check: Check) -> Check:
    """``check``, or null."""

    def opt(v: Any, path: str, errors: Errors) -> Any:
        return None if v is None else check(v, path, errors)

    return opt


def list_of(item: Check, *, min_len: int = 0, max_len: int = 1000) -> Check:
    """A list of items, each checked at ``path[i]``."""

    def check(v: Any, path: str, errors: Errors) -> Any:
        if not isinstance(v, list):
            errors.append(f"{path}: expected a list, got {_show(v)}")
            return None
        if len(v) < min_len:
            errors.append(f"{path}: needs at least {min_len} item{'s' if min_len > 1 else ''}")
            return None
        if len(v) > max_len:
            errors.append(f"{path}: at most {max_len} items")
            return None
        before = len(errors)
        out = tuple(item(x, f"{path}[{i}]", errors) for i, x in enumerate(v))
        return out if len(errors) == before else None

    return check


def str_map(max_len: int = 100) -> Check:
    """A mapping of names to string values (static fields)."""

    def check(v: Any, path: str, errors: Errors) -> Any:
        if not isinstance(v, dict):
            errors.append(f"{path}: expected a mapping of names to values, got {_show(v)}")
            return None
        if len(v) > max_len:
            errors.append(f"{path}: at most {max_len} fields")
            return None
        out: dict[str, str] = {}
        for k, x in v.items():
            if not isinstance(k, str) or not _FIELD_NAME_RE.match(k):
                errors.append(f"{path}: invalid field name {_show(k)} (letters, digits, _ . -)")
            elif isinstance(x, bool):
                out[k] = "true" if x else "false"
            elif isinstance(x, str) and len(x) <= 4096:
                out[k] = str(x)
            elif isinstance(x, int | float) and math.isfinite(x):
                out[k] = repr(x)
            else:
                errors.append(f"{path}.{k}: expected a string or number, got {_show(x)}")
        return out

    return check


def section(cls: type[Any]) -> Check:
    """A nested section (a dataclass of this module)."""

    def check(v: Any, path: str, errors: Errors) -> Any:
        return _build(cls, v, path, errors)

    return check


def _opt(check: Check, default: Any = MISSING, *, factory: Any = MISSING) -> Any:
    """A dataclass field carrying its check; no default means required."""
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"check": check})
    if default is MISSING:
        return field(metadata={"check": check})
    return field(default=default, metadata={"check": check})


def _absolute(path: str) -> str | None:
    if not path.strip():
        return "a path cannot be empty"
    if not os.path.isabs(path):
        return f"path {path!r} must be absolute"
    if "\0" in path:
        return "a path cannot contain NUL"
    return None


def _regex(pattern: str) -> str | None:
    try:
        re.compile(pattern.encode())
    except (re.error, RecursionError, OverflowError) as e:
        return f"invalid regular expression: {e}"
    return None


def _topic(name: str) -> str | None:
    if name in {".", ".."} or not _TOPIC_RE.match(name):
        return (
            f"invalid topic name {name!r}: 1-249 characters of letters, digits, '.', '_', "
            "'-', and not '.' or '..'"
        )
    return None


def _host_port(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{value!r} is not host:port"
    return None


def _listen(value: str) -> str | None:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) >= 65536:
        return f"{value!r} is not host:port"
    return None


def _key(value: str) -> str | None:
    if value in {"none", "path", "host"} or (
        value.startswith("field:") and _FIELD_NAME_RE.match(value[6:])
    ):
        return None
    return f"expected none, path, host or field:NAME; got {value!r}"


# -- sections ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MultilineConfig:
    """Join continuation lines (stack traces) into one record."""

    start_pattern: str = _opt(text(min_len=1, max_len=1000, test=_regex))
    max_lines: int = _opt(integer(1, 100_000), 500)
    timeout: float = _opt(duration(0.0, 3600.0), 1.0)


@dataclass(frozen=True, slots=True)
class InputConfig:
    """One group of files to tail, and (optionally) where and how its lines go."""

    paths: tuple[str, ...] = _opt(list_of(text(min_len=1, test=_absolute), min_len=1))
    exclude: tuple[str, ...] = _opt(list_of(text(min_len=1)), ())
    start_at: str = _opt(choice("end", "beginning"), "end")
    max_line_bytes: int = _opt(size(16, 64 * MiB), 1 * MiB)
    long_lines: str = _opt(choice("truncate", "drop"), "truncate")
    follow_symlinks: bool = _opt(boolean(), False)
    ignore_older: float | None = _opt(optional(duration(above=0.0)), None)
    close_inactive: float = _opt(duration(0.0, 30 * 86400.0), 300.0)
    multiline: MultilineConfig | None = _opt(optional(section(MultilineConfig)), None)
    topic: str | None = _opt(optional(text(test=_topic)), None)
    format: str | None = _opt(optional(choice("raw", "json")), None)
    fields: dict[str, str] = _opt(str_map(), factory=dict)


@dataclass(frozen=True, slots=True)
class TailConfig:
    """How the tailer discovers and reads files."""

    rescan_interval: float = _opt(duration(0.01, 3600.0), 10.0)
    poll_interval: float = _opt(duration(0.001, 300.0), 1.0)
    read_chunk: int = _opt(size(4 * KiB, 64 * MiB), 1 * MiB)
    read_budget: int = _opt(size(4 * KiB, 1 * GiB), 4 * MiB)
    rotate_wait: float = _opt(duration(0.0, 3600.0), 5.0)
    max_open_files: int = _opt(integer(4, 1_000_000), 1024)
    fingerprint_bytes: int = _opt(integer(16, 65536), 1024)
    coalesce: float = _opt(duration(0.0, 1.0), 0.0)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """The bounded in-memory queue between tailer and sender."""

    max_lines: int = _opt(integer(1, 100_000_000), 100_000)
    max_bytes: int = _opt(size(1 * KiB, 64 * GiB), 64 * MiB)
    when_full: str = _opt(choice("drop_newest", "drop_oldest"), "drop_newest")
    stall_timeout: float = _opt(duration(0.0, 3600.0), 5.0)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS towards the brokers (protocols ssl and sasl_ssl)."""

    ca_file: str | None = _opt(optional(text(min_len=1, test=_absolute)), None)
    cert_file: str | None = _opt(optional(text(min_len=1, test=_absolute)), None)
    key_file: str | None = _opt(optional(text(min_len=1, test=_absolute)), None)
    key_password: Secret | None = field(default=None, metadata={"check": None, "secret": True})
    key_password_file: str | None = _opt(optional(text(min_len=1, test=_absolute)), None)
    verify_hostname: bool = _opt(boolean(), True)


@dataclass(frozen=True, slots=True)
class SaslConfig:
    """SASL authentication (protocols sasl_plaintext and sasl_ssl)."""

    mechanism: str = _opt(choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"), "SCRAM-SHA-512")
    username: str = _opt(text(min_len=1, max_len=256), "")
    password: Secret | None = field(default=None, metadata={"check": None, "secret": True})
    password_file: str | None = _opt(optional(text(min_len=1, test=_absolute)), None)


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """How to reach a secured Kafka."""

    protocol: str = _opt(choice("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"), "plaintext")
    tls: TlsConfig = _opt(section(TlsConfig), factory=TlsConfig)
    sasl: SaslConfig | None = _opt(optional(section(SaslConfig)), None)

    @property
    def uses_tls(self) -> bool:
        """The protocol wraps connections in TLS."""
        return self.protocol in {"ssl", "sasl_ssl"}

    @property
    def uses_sasl(self) -> bool:
        """The protocol authenticates with SASL."""
        return self.protocol in {"sasl_plaintext", "sasl_ssl"}


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    """Where and how lines are produced."""

    bootstrap_servers: tuple[str, ...] = _opt(
        list_of(text(min_len=1, max_len=300, test=_host_port), min_len=1, max_len=100)
    )
    topic: str = _opt(text(test=_topic))
    client_id: str = _opt(text(min_len=1, max_len=255), "shipper")
    partition_by: str | None = _opt(optional(choice("none", "file", "host")), None)
    key: str = _opt(text(test=_key), "none")
    format: str = _opt(choice("raw", "json"), "raw")
    headers: tuple[str, ...] = _opt(
        list_of(choice("host", "path", "offset", "fields", "kubernetes"), max_len=5), ()
    )
    fields: dict[str, str] = _opt(str_map(), factory=dict)
    compression: str = _opt(choice("none", "gzip", "lz4", "zstd", "snappy"), "none")
    linger: float = _opt(duration(0.0, 10.0), 0.005)
    batch_max_bytes: int = _opt(size(1 * KiB, 64 * MiB), 1000 * KiB)
    batch_max_lines: int = _opt(integer(1, 1_000_000), 20_000)
    max_in_flight_bytes: int = _opt(size(64 * KiB, 1 * GiB), 1 * MiB)
    unavailable_timeout: float = _opt(duration(0.0, 3600.0), 5.0)
    metadata_refresh: float = _opt(duration(0.1, 86400.0), 30.0)
    connect_backoff_max: float = _opt(duration(0.01, 600.0), 5.0)
    fence_interval: float = _opt(duration(0.001, 60.0), 0.1)
    fence_bytes: int = _opt(size(1 * KiB, 1 * GiB), 1 * MiB)
    stall_timeout: float = _opt(duration(0.1, 600.0), 2.0)
    security: SecurityConfig = _opt(section(SecurityConfig), factory=SecurityConfig)
    # Derived from the environment: the host name, and the Downward API variables set.
    host: str = field(default="", metadata={"derived": True})
    kubernetes: dict[str, str] = field(default_factory=dict, metadata={"derived": True})


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    """Where file positions are kept across restarts."""

    path: str = _opt(text(min_len=1, test=_absolute), "/var/lib/shipper/registry.json")
    reserve: int = _opt(size(0, 1 * GiB), 4 * MiB)
    forget_after: float = _opt(duration(1.0, 366 * 86400.0), 24 * 3600.0)
    max_entries: int = _opt(integer(1, 10_000_000), 100_000)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The /metrics and /health HTTP endpoint."""

    enabled: bool = _opt(boolean(), True)
    listen: str = _opt(text(min_len=1, max_len=300, test=_listen), "127.0.0.1:9108")


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Our own logs: JSON to stdout by default."""

    level: str = _opt(choice("debug", "info", "warning", "error"), "info")
    format: str = _opt(choice("json", "console"), "json")
    stats_interval: float = _opt(duration(1.0, 86400.0), 60.0)


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    """What happens on SIGTERM."""

    drain_timeout: float = _opt(duration(0.0, 3600.0), 5.0)
    read_idle: float = _opt(duration(0.0, 3600.0), 1.0)


@dataclass(frozen=True, slots=True)
class Route:
    """Where and how the lines of one input go (derived from the input and kafka sections)."""

    topic: str
    format: str
    fields: dict[str, str]
    #: What the sender does with a line too long for the topic's batch limit (``truncate`` or
    #: ``drop``, as the tailer does at ``max_line_bytes``).
    long_lines: str = "truncate"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration; components get only their own slice.

    ``routes[i]`` says where input ``i``'s lines go; ``warnings`` lists what is valid but
    unwise (a password written in the file).
    """

    inputs: tuple[InputConfig, ...] = _opt(list_of(section(InputConfig), min_len=1, max_len=500))
    kafka: KafkaConfig = _opt(section(KafkaConfig))
    tail: TailConfig = _opt(section(TailConfig), factory=TailConfig)
    queue: QueueConfig = _opt(section(QueueConfig), factory=QueueConfig)
    registry: RegistryConfig = _opt(section(RegistryConfig), factory=RegistryConfig)
    metrics: MetricsConfig = _opt(section(MetricsConfig), factory=MetricsConfig)
    log: LogConfig = _opt(section(LogConfig), factory=LogConfig)
    shutdown: ShutdownConfig = _opt(section(ShutdownConfig), factory=ShutdownConfig)
    routes: tuple[Route, ...] = field(default=(), metadata={"derived": True})
    warnings: tuple[str, ...] = field(default=(), metadata={"derived": True})


T = TypeVar("T")


def _build(cls: type[T], raw: Any, path: str, errors: Errors) -> T | None:
    """Check ``raw`` against the fields of ``cls``; record every problem under ``path``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{path or '<root>'}: expected a mapping, got {_show(raw)}")
        return None
    known = {f.name: f for f in fields(cls) if not f.metadata.get("derived")}  # type: ignore[arg-type]
    before = len(errors)
    for k in raw:
        if k not in known:
            errors.append(f"{_join(path, k)}: unknown key")
    values: dict[str, Any] = {}
    for name, f in known.items():
        where = _join(path, name)
        if f.metadata.get("secret"):
            if name in raw:
                values[name] = _secret(raw[name], where, errors)
            continue
        if name in raw:
            values[name] = f.metadata["check"](raw[name], where, errors)
        elif f.default is MISSING and f.default_factory is MISSING:
            errors.append(f"{where}: required")
    if len(errors) > before:
        return None
    obj = cls(**values)
    problems = _CROSS.get(cls)
    if problems is not None:
        errors.extend(f"{_join(path, k)}: {msg}" for k, msg in problems(obj))
    return obj if len(errors) == before else None


def _join(path: str, key: object) -> str:
    k = key if isinstance(key, str) else _show(key)
    return f"{path}.{k}" if path else k


def _secret(raw: Any, path: str, errors: Errors) -> Secret | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        errors.append(f"{path}: expected a non-empty string")
        return None
    return Secret(raw)


# -- rules across fields -----------------------------------------------------------------
def _sasl_rules(c: SecurityConfig) -> list[tuple[str, str]]:
    out = []
    if c.uses_sasl:
        s = c.sasl
        if s is None or not s.username:
            out.append(("sasl.username", f"required with protocol {c.protocol}"))
        elif s.password is None and s.password_file is None:
            out.append(("sasl.password_file", f"required with protocol {c.protocol}"))
        elif s.password is not None and s.password_file is not None:
            out.append(("sasl", "give password or password_file, not both"))
    elif c.sasl is not None:
        out.append(("sasl", f"only used with sasl_plaintext or sasl_ssl, not {c.protocol}"))
    t = c.tls
    if (t.cert_file is None) != (t.key_file is None):
        out.append(("tls", "cert_file and key_file go together (mutual TLS)"))
    if t.key_password is not None and t.key_password_file is not None:
        out.append(("tls", "give key_password or key_password_file, not both"))
    if not c.uses_tls and t != TlsConfig():
        out.append(("tls", f"only used with ssl or sasl_ssl, not {c.protocol}"))
    return out


def _kafka_rules(k: KafkaConfig) -> list[tuple[str, str]]:
    out = []
    if not codec_installed(k.compression):
        out.append(
            (
                "compression",
                f"compression {k.compression!r} needs the Python module "
                f"{CODEC_MODULES[k.compression]!r}, which is not installed "
                f"(pip install 'shipper[{k.compression}]')",
            )
        )
    if k.partition_by is not None and k.key != "none":
        out.append(("partition_by", "replaced by key: give one of them"))
    if k.headers and k.format == "json":
        out.append(("headers", "headers go with format raw (json carries the same fields)"))
    return out


def _config_rules(c: Config) -> list[tuple[str, str]]:
    out = []
    if c.kafka.batch_max_bytes > c.queue.max_bytes:
        out.append(("kafka.batch_max_bytes", "must not exceed queue.max_bytes"))
    if c.shutdown.read_idle > c.shutdown.drain_timeout and c.shutdown.drain_timeout > 0:
        out.append(("shutdown.read_idle", "must not exceed shutdown.drain_timeout"))
    for i, inp in enumerate(c.inputs):
        if inp.format == "json" and c.kafka.headers:
            out.append((f"inputs[{i}].format", "json does not go with kafka.headers"))
    name = c.kafka.key.removeprefix("field:")
    if name != c.kafka.key and name not in c.kafka.fields:
        # A record key must come from somewhere for every input, or its lines go unkeyed.
        unset = [f"inputs[{i}]" for i, inp in enumerate(c.inputs) if name not in inp.fields]
        if unset:
            out.append(("kafka.key", f"field {name!r} is not set for {', '.join(unset)}"))
    return out


_CROSS: dict[type[Any], Callable[[Any], list[tuple[str, str]]]] = {
    SecurityConfig: _sasl_rules,
    KafkaConfig: _kafka_rules,
    Config: _config_rules,
}


def build(cls: type[T], **raw: Any) -> T:
    """Build one section from keyword values, checked like the file (tests, tools)."""
    errors: Errors = []
    obj = _build(cls, raw, "", errors)
    if obj is None:
        raise ConfigError(errors or [f"{cls.__name__}: invalid"])
    return obj


# -- reading -----------------------------------------------------------------------------
def _interpolate(node: Any, env: Mapping[str, str], path: str, errors: Errors) -> Any:
    if isinstance(node, str):
        hit = False

        def sub(m: re.Match[str]) -> str:
            nonlocal hit
            hit = True
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            errors.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        out = _ENV_RE.sub(sub, node)
        return _Interpolated(out) if hit else out
    if isinstance(node, dict):
        return {k: _interpolate(v, env, _join(path, k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    return node


def _check_shape(text_: str, source: str) -> None:
    """Refuse alias bombs and deep nesting from the event stream, before anything is built."""
    aliases = depth = 0
    try:
        for ev in yaml.parse(text_, Loader=_LOADER):
            if isinstance(ev, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise ConfigError([f"{source}: more than {MAX_ALIASES} YAML aliases"])
            elif isinstance(ev, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError([f"{source}: nested deeper than {MAX_DEPTH} levels"])
            elif isinstance(ev, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(e, source)]) from None


def _yaml_problem(e: yaml.YAMLError, source: str) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{source}: invalid YAML{where}: {problem}"


_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse(text_: str, env: Mapping[str, str] | None = None, source: str = "<config>") -> Config:
    """Validate YAML text into a Config or raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    if len(text_) > MAX_FILE_BYTES:
        raise ConfigError([f"{source}: larger than {MAX_FILE_BYTES // KiB} KiB"])
    _check_shape(text_, source)
    try:
        raw = yaml.load(text_, Loader=_LOADER)  # noqa: S506  # a safe loader
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(e, source)]) from None
    except (ValueError, OverflowError, RecursionError, MemoryError) as e:
        raise ConfigError([f"{source}: cannot be read as YAML: {_show(str(e))}"]) from None
    if raw is None:
        raise ConfigError([f"{source}: the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {type(raw).__name__}"])
    errors: Errors = []
    raw = _interpolate(raw, env, "", errors)
    if errors:
        raise ConfigError(errors)
    cfg = _build(Config, raw, "", errors)
    if cfg is None:
        raise ConfigError(errors)
    return _derive(cfg, raw, env, errors)


def _derive(cfg: Config, raw: Mapping[str, Any], env: Mapping[str, str], errors: Errors) -> Config:
    """Values that follow from others or from the environment, computed once."""
    # A line must fit in one batch the broker accepts: long_lines applies at that length.
    limit = cfg.kafka.batch_max_bytes - LINE_ROOM
    inputs = tuple(replace(i, max_line_bytes=min(i.max_line_bytes, limit)) for i in cfg.inputs)
    warnings: list[str] = []
    kafka = replace(cfg.kafka, security=_secrets(cfg.kafka.security, raw, warnings, errors))
    if errors:
        raise ConfigError(errors)
    if kafka.partition_by is not None:
        key = {"none": "none", "file": "path", "host": "host"}[kafka.partition_by]
        kafka = replace(kafka, key=key)
    kafka = replace(
        kafka,
        host=env.get("SHIPPER_HOSTNAME") or socket.gethostname(),
        kubernetes={name: env[var] for var, name in KUBERNETES_ENV.items() if env.get(var)},
    )
    routes = tuple(
        Route(
            topic=i.topic or kafka.topic,
            format=i.format or kafka.format,
            fields={**kafka.fields, **i.fields},
            long_lines=i.long_lines,
        )
        for i in inputs
    )
    return replace(cfg, inputs=inputs, kafka=kafka, routes=routes, warnings=tuple(warnings))


def _secrets(
    sec: SecurityConfig, raw: Mapping[str, Any], warnings: list[str], errors: Errors
) -> SecurityConfig:
    """Read password files now (so a reload picks up a rotated secret), and warn about a
    password written in the file itself."""
    raw_sec = raw.get("kafka", {}).get("security", {}) or {}
    sasl = sec.sasl
    if sasl is not None:
        if sasl.password_file is not None:
            pw = _read_secret(sasl.password_file, "kafka.security.sasl.password_file", errors)
            sasl = replace(sasl, password=pw)
        elif sasl.password is not None and not isinstance(
            (raw_sec.get("sasl") or {}).get("password"), _Interpolated
        ):
            warnings.append(
                "kafka.security.sasl.password: written in the config file; prefer "
                "password_file (systemd LoadCredential=) or ${ENV}"
            )
        if sec.protocol == "sasl_plaintext" and sasl.mechanism == "PLAIN":
            warnings.append(
                "kafka.security.protocol: sasl_plaintext with PLAIN sends the password "
                "unencrypted; prefer sasl_ssl or a SCRAM mechanism"
            )
    tls = sec.tls
    if tls.key_password_file is not None:
        pw = _read_secret(tls.key_password_file, "kafka.security.tls.key_password_file", errors)
        tls = replace(tls, key_password=pw)
    elif tls.key_password is not None and not isinstance(
        (raw_sec.get("tls") or {}).get("key_password"), _Interpolated
    ):
        warnings.append(
            "kafka.security.tls.key_password: written in the config file; prefer "
            "key_password_file or ${ENV}"
        )
    unreadable = False
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not os.access(path, os.R_OK):
            errors.append(f"kafka.security.tls.{name}: cannot read {path}")
            unreadable = True
    if sec.uses_tls and not unreadable and not errors:
        # Load the files as the connection will: a wrong key password or a file that holds
        # no certificate is a config error now, not a connection failure later.
        from shipper.kafka.security import tls_problems  # noqa: PLC0415  # only with TLS

        errors.extend(f"kafka.security.tls.{k}: {msg}" for k, msg in tls_problems(tls))
    if sec.uses_tls and not tls.verify_hostname:
        warnings.append(
            "kafka.security.tls.verify_hostname: false: any certificate the CA signed is "
            "accepted for any broker"
        )
    return replace(sec, sasl=sasl, tls=tls)


def _read_secret(path: str, where: str, errors: Errors) -> Secret | None:
    try:
        with open(path, "rb") as f:
            data = f.read(64 * KiB + 1)
    except OSError as e:
        errors.append(f"{where}: cannot read {path}: {e.strerror}")
        return None
    if len(data) > 64 * KiB:
        errors.append(f"{where}: {path} is larger than 64 KiB")
        return None
    try:
        value = data.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        errors.append(f"{where}: {path} is not UTF-8 text")
        return None
    if not value:
        errors.append(f"{where}: {path} is empty")
        return None
    return Secret(value)


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{p}: larger than {MAX_FILE_BYTES // KiB} KiB"])
    try:
        text_ = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    return parse(text_, env, str(p))
