"""Config loading: sizes, durations, env interpolation, and errors that name the key path."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

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
    assert cfg.kafka.bootstrap_servers == ("kafka:9093",)
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
    assert "inputs[0].paths:" in problems
    assert "inputs[0].start_at:" in problems
    assert "queue.max_bytes: invalid size 'lots'" in problems
    assert "queue.when_ful: unknown key" in problems
    assert "kafka.bootstrap_servers: required" in problems


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


def test_key_field_must_be_set_for_every_input() -> None:
    """key field:NAME needs NAME among the static fields of every input (global or its own)."""
    two = MINIMAL.replace(
        '  - paths: ["/var/log/app/*.log"]\n',
        '  - paths: ["/var/log/app/*.log"]\n    fields: {team: a}\n  - paths: ["/b/*.log"]\n',
    )
    with pytest.raises(ConfigError) as info:
        parse(two + "  key: field:team\n")
    assert info.value.problems == ["kafka.key: field 'team' is not set for inputs[1]"]
    cfg = parse(two + "  key: field:team\n  fields: {team: z}\n")
    assert [r.fields["team"] for r in cfg.routes] == ["a", "z"]


# -- hostile input: never a traceback, always 0 or 2, always fast --------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["64MiB", "1e400", "-1", "0", ".inf", "${HOME}", "${UNSET_X}", "..", "-5s"]),
)
_trees = st.recursive(
    _scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=5), st.dictionaries(st.text(max_size=12), kids, max_size=5)
    ),
    max_leaves=30,
)
_KEYS = [
    ("inputs", 0, "paths"),
    ("inputs", 0, "max_line_bytes"),
    ("inputs", 0, "multiline"),
    ("tail", "poll_interval"),
    ("tail", "rescan_interval"),
    ("queue", "max_bytes"),
    ("queue", "max_lines"),
    ("kafka", "topic"),
    ("kafka", "bootstrap_servers"),
    ("kafka", "security"),
    ("kafka", "fields"),
    ("kafka", "headers"),
    ("kafka", "key"),
    ("registry", "path"),
    ("log", "stats_interval"),
    ("shutdown", "drain_timeout"),
    ("x",),
]


def _valid() -> dict[str, Any]:
    return {
        "inputs": [{"paths": ["/var/log/app/*.log"]}],
        "kafka": {"bootstrap_servers": ["127.0.0.1:9092"], "topic": "logs"},
    }


def _outcome(text: str) -> str:
    """What validation says about ``text``: ok, or a config error; anything else fails."""
    t = time.monotonic()
    problems: list[str] = []
    try:
        parse(text, env={"HOME": "/root"})
    except ConfigError as e:
        problems = e.problems or [""]
    assert time.monotonic() - t < 1.0, "validation took over 1 s"
    assert all(isinstance(p, str) and p for p in problems)
    return "error" if problems else "ok"


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_is_valid_or_a_config_error(text: str) -> None:
    """Any text at all gives a config or ConfigError, fast: never another exception."""
    _outcome(text)


@settings(max_examples=300, deadline=None)
@given(tree=_trees)
def test_arbitrary_yaml_is_valid_or_a_config_error(tree: object) -> None:
    """Any YAML document gives a config or ConfigError, fast."""
    _outcome(yaml.safe_dump(tree))


@settings(max_examples=500, deadline=None)
@given(where=st.sampled_from(_KEYS), value=_trees)
def test_any_value_in_any_key_is_valid_or_a_config_error(
    where: tuple[Any, ...], value: object
) -> None:
    """A valid config with one key set to anything gives a config or ConfigError, fast."""
    doc: Any = _valid()
    node = doc
    for k in where[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    node[where[-1]] = value
    _outcome(yaml.safe_dump(doc))


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        (
            "a: &a [1, 2]\n" + "".join(f"b{i}: &b{i} [*a, *a]\n" for i in range(70)),
            "more than 64 YAML aliases",
        ),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than 32 levels"),
        ("x: " + "9" * 5000 + "\n", "cannot be read as YAML"),
        ("x: " + "a" * (1024 * 1024 + 1), "larger than 1024 KiB"),
    ],
)
def test_hostile_documents_are_refused_before_expansion(text: str, expect: str) -> None:
    """Alias bombs, deep nesting, huge numbers and huge files are refused with one line."""
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert expect in info.value.problems[0]


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        ("log:\n  stats_interval: 0\n", "log.stats_interval: must be at least 1s"),
        ("tail:\n  poll_interval: .inf\n", "tail.poll_interval: invalid duration inf"),
        ("tail:\n  poll_interval: 1h\n", "tail.poll_interval: must be at most 300s"),
        ("registry:\n  path: state/registry.json\n", "registry.path: path 'state/registry"),
        ("queue:\n  max_bytes: 1TiB\n", "queue.max_bytes: invalid size"),
        ("queue:\n  max_bytes: 1000GiB\n", "queue.max_bytes: must be at most 64GiB"),
    ],
)
def test_every_number_has_a_range(extra: str, expect: str) -> None:
    """Durations, sizes and paths outside their range are errors naming the key."""
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + extra)
    assert any(p.startswith(expect) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("topic", [".", "..", "a" * 250, "has space", "ünïcode", ""])
def test_topic_names_follow_kafkas_rules(topic: str) -> None:
    """Topics Kafka would refuse are refused here."""
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL.replace("topic: logs", f"topic: {json.dumps(topic)}"))
    assert info.value.problems[0].startswith("kafka.topic:")
