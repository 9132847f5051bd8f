"""Config loading: sizes, durations, env interpolation, and errors that name the key path."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shipper.config import load, parse, parse_duration, parse_size
from shipper.errors import ConfigError
from tests.support.pki import Pki, make_pki

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


# -- kafka.security -------------------------------------------------------------------------
SECRET = "Very-S3cret-passw0rd"


@pytest.fixture(name="pki", scope="module")
def fixture_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A test CA with a client certificate and its password-protected key."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _secured(security: dict[str, Any]) -> str:
    doc = _valid()
    doc["kafka"]["security"] = security
    return yaml.safe_dump(doc)


def test_password_file_is_read_at_every_load(tmp_path: Path) -> None:
    """The SASL password comes from password_file when the config is loaded, so loading
    again (a reload) picks up a rotated secret; it never shows in the config's repr."""
    pw = tmp_path / "kafka-password"
    pw.write_text(SECRET + "\n")
    conf = tmp_path / "shipper.yaml"
    conf.write_text(
        _secured(
            {
                "protocol": "sasl_plaintext",
                "sasl": {"username": "shipper", "password_file": str(pw)},
            }
        )
    )
    sasl = load(conf).kafka.security.sasl
    assert sasl is not None
    assert sasl.password is not None
    assert sasl.password.reveal() == SECRET
    pw.write_text("rotated-secret")
    rotated = load(conf)
    assert rotated.kafka.security.sasl is not None
    assert rotated.kafka.security.sasl.password is not None
    assert rotated.kafka.security.sasl.password.reveal() == "rotated-secret"
    assert SECRET not in repr(rotated)
    assert not rotated.warnings


def test_password_from_env_is_not_a_warning_but_a_literal_is() -> None:
    """${ENV} passwords are quiet; a password written in the file is valid with a warning
    that never repeats it."""
    from_env = _secured(
        {
            "protocol": "sasl_ssl",
            "sasl": {"username": "shipper", "password": "${KAFKA_PASSWORD}"},
        }
    )
    assert parse(from_env, env={"KAFKA_PASSWORD": SECRET}).warnings == ()
    literal = parse(from_env.replace("${KAFKA_PASSWORD}", SECRET), env={})
    assert [w.split(":")[0] for w in literal.warnings] == ["kafka.security.sasl.password"]
    assert SECRET not in " ".join(literal.warnings)


@pytest.mark.parametrize("value", [12345, ["a"], ""])
def test_a_bad_password_value_is_not_echoed(value: object) -> None:
    """A password of the wrong type is an error that does not print the value."""
    with pytest.raises(ConfigError) as info:
        parse(_secured({"protocol": "sasl_ssl", "sasl": {"username": "u", "password": value}}))
    assert info.value.problems == ["kafka.security.sasl.password: expected a non-empty string"]


def test_plain_over_sasl_plaintext_warns() -> None:
    """PLAIN without TLS sends the password in the clear: valid, with a warning."""
    cfg = parse(
        _secured(
            {
                "protocol": "sasl_plaintext",
                "sasl": {"mechanism": "PLAIN", "username": "u", "password": "${P}"},
            }
        ),
        env={"P": SECRET},
    )
    assert [w.split(":")[0] for w in cfg.warnings] == ["kafka.security.protocol"]


def test_turning_host_name_verification_off_warns(pki: Pki) -> None:
    """verify_hostname: false is accepted, and said."""
    cfg = parse(
        _secured({"protocol": "ssl", "tls": {"ca_file": str(pki.ca), "verify_hostname": False}})
    )
    assert not cfg.kafka.security.tls.verify_hostname
    assert [w.split(":")[0] for w in cfg.warnings] == ["kafka.security.tls.verify_hostname"]


def test_client_key_password_file_opens_the_key(pki: Pki, tmp_path: Path) -> None:
    """key_password_file decrypts the client key at load; a wrong one is a config error
    naming the key, and a literal key_password is a warning."""
    good = tmp_path / "key-password"
    good.write_text(pki.client_key_password)
    tls = {
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key_encrypted),
        "key_password_file": str(good),
    }
    assert parse(_secured({"protocol": "ssl", "tls": tls})).warnings == ()
    good.write_text("wrong")
    with pytest.raises(ConfigError) as info:
        parse(_secured({"protocol": "ssl", "tls": tls}))
    assert info.value.problems == [
        f"kafka.security.tls.key_password_file: the password does not decrypt "
        f"{pki.client_key_encrypted}"
    ]
    del tls["key_password_file"]
    literal = parse(
        _secured({"protocol": "ssl", "tls": {**tls, "key_password": pki.client_key_password}})
    )
    assert [w.split(":")[0] for w in literal.warnings] == ["kafka.security.tls.key_password"]
    assert pki.client_key_password not in repr(literal)


def test_a_ca_file_without_a_certificate_is_a_config_error(pki: Pki) -> None:
    """A CA file that holds no certificate is found at load, not at the first connection."""
    with pytest.raises(ConfigError) as info:
        parse(_secured({"protocol": "ssl", "tls": {"ca_file": str(pki.client_key)}}))
    (problem,) = info.value.problems
    assert problem.startswith("kafka.security.tls.ca_file: no usable CA certificate")
