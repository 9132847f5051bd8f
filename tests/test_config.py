"""Config loading: sizes, durations, env interpolation, and errors that name the key path."""

from __future__ import annotations

import pytest

from shipper.config import parse, parse_duration, parse_size
from shipper.errors import ConfigError

MINIMAL = """
inputs:
  - paths: ["/var/log/app/*.log"]
kafka:
  bootstrap_servers: ["127.0.0.1:9092"]
  topic: logs
"""


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("64MiB", 64 * 1024**2),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024**3),
        ("10MB", 10**7),
        ("100", 100),
        (4096, 4096),
        ("1.5KiB", 1536),
    ],
)
def test_sizes(text: object, expect: int) -> None:
    """Sizes accept plain numbers and KiB/MiB/GiB (and decimal) units."""
    assert parse_size(text) == expect


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        (3, 3.0),
        ("1.5s", 1.5),
    ],
)
def test_durations(text: object, expect: float) -> None:
    """Durations accept plain seconds and ms/s/m/h."""
    assert parse_duration(text) == expect


def test_minimal_config_gets_defaults() -> None:
    """A config with only inputs and kafka is valid and gets safe defaults."""
    cfg = parse(MINIMAL)
    assert cfg.queue.when_full == "drop_newest"
    assert cfg.inputs[0].start_at == "end"
    assert cfg.shutdown.drain_timeout == 5.0


def test_env_interpolation_with_default() -> None:
    """${VAR} and ${VAR:-default} come from the environment."""
    text = MINIMAL.replace('"127.0.0.1:9092"', '"${BROKER}"').replace(
        "topic: logs", "topic: ${TOPIC:-fallback}"
    )
    cfg = parse(text, env={"BROKER": "kafka:9093"})
    assert cfg.kafka.bootstrap_servers == ["kafka:9093"]
    assert cfg.kafka.topic == "fallback"


def test_every_problem_is_reported_with_its_path() -> None:
    """All problems are listed at once, each with its dotted key path."""
    text = """
inputs:
  - paths: []
    start_at: middle
queue:
  max_bytes: lots
  when_ful: drop_newest
kafka:
  topic: logs
"""
    with pytest.raises(ConfigError) as info:
        parse(text)
    problems = "\n".join(info.value.problems)
    assert "inputs.0.paths:" in problems
    assert "inputs.0.start_at:" in problems
    assert "queue.max_bytes: invalid size 'lots'" in problems
    assert "queue.when_ful: unknown key" in problems
    assert "kafka.bootstrap_servers: Field required" in problems


def test_missing_codec_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compression whose codec is not installed is refused by validation, with the extra
    to install, so ``validate`` and ``run`` agree."""
    from shipper.kafka import encode  # noqa: PLC0415

    monkeypatch.setitem(encode.CODEC_MODULES, "zstd", "no_such_codec_module")
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + "  compression: zstd\n")
    (problem,) = info.value.problems
    assert problem.startswith("kafka.compression: compression 'zstd' needs")
    assert "shipper[zstd]" in problem


def test_line_limit_follows_the_batch_size() -> None:
    """max_line_bytes is capped so that a line always fits in one batch."""
    cfg = parse(MINIMAL + "  batch_max_bytes: 64KiB\n")
    assert cfg.inputs[0].max_line_bytes == 64 * 1024 - 128
