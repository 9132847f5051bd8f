"""A secured broker (scripts/kafka-local --security): delivery over SASL_SSL and mutual TLS,
each way of failing to connect named, validate --connect, and the password nowhere."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka.admin import KafkaAdminClient, NewTopic

from shipper import config
from shipper.kafka import security
from shipper.kafka.probe import probe
from tests.conftest import ROOT, Broker
from tests.integration.conftest import Secure, Start, append, base_config
from tests.support.readback import collect_stray_sockets, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


WRONG_PASSWORD = "Wr0ng-Known-Secret-4-grep"


def sasl_ssl(s: Secure, **sasl: Any) -> dict[str, Any]:
    """SCRAM-SHA-512 as the normal user over SASL_SSL, the test CA, host names verified."""
    return {
        "protocol": "sasl_ssl",
        "tls": {"ca_file": s.ca_file},
        "sasl": {
            "mechanism": "SCRAM-SHA-512",
            "username": s.scram_user,
            "password_file": s.scram_password_file,
            **sasl,
        },
    }


def mutual_tls(s: Secure) -> dict[str, Any]:
    """SSL with our client certificate, its key encrypted and its password in a file."""
    return {
        "protocol": "ssl",
        "tls": {
            "ca_file": s.ca_file,
            "cert_file": s.client_cert,
            "key_file": s.client_key_encrypted,
            "key_password_file": s.client_key_password_file,
        },
    }


def shipper_config(
    bootstrap: str, topic: str, workdir: Path, security_: dict[str, Any], **over: Any
) -> dict[str, Any]:
    cfg = base_config(
        Broker(bootstrap, None, None), topic, workdir, [str(workdir / "*.log")], **over
    )
    cfg["kafka"]["security"] = security_
    return cfg


def create_topic(s: Secure, partitions: int = 1) -> str:
    """A new topic, made on the unrestricted plaintext listener."""
    topic = f"t-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
        collect_stray_sockets()
    return topic


def validate(conf: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``shipper validate -c conf [extra]``: exit code and stdout + stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "shipper", "validate", "-c", str(conf), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )
    return proc.returncode, proc.stdout + proc.stderr


def write_conf(cfg: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- delivery ---------------------------------------------------------------------------------
def lines_for(topic: str, n: int) -> list[bytes]:
    """Lines that are not all text: invalid UTF-8, tabs, a carriage return, a long one."""
    out = [
        f"{topic} line {i}\twith tab".encode() + bytes([0xFF, 0xFE, 0x80 + i % 128])
        for i in range(n)
    ]
    out[7] = b"x" * 50_000
    out[8] = b"a carriage\rreturn inside (a trailing one is stripped, as documented)"
    return out


@pytest.mark.parametrize("how", ["sasl_ssl_scram_sha_512", "ssl_client_certificate"])
def test_delivery_is_byte_exact_and_once(
    secure: Secure, tmp_path: Path, how: str, start_shipper: Start
) -> None:
    """Every line arrives once, byte for byte, read back by a consumer configured exactly
    as the shipper was (the same config file, through security.options)."""
    topic = create_topic(secure)
    if how == "sasl_ssl_scram_sha_512":
        bootstrap, sec = secure.sasl_ssl_bootstrap, sasl_ssl(secure)
    else:
        bootstrap, sec = secure.ssl_bootstrap, mutual_tls(secure)
    lines = lines_for(topic, 3000)
    append(tmp_path / "app.log", lines)
    shipper = start_shipper(shipper_config(bootstrap, topic, tmp_path, sec), tmp_path)
    shipper.wait_for(lambda led: led["sent"] == len(lines), what="every line sent")
    code, health = shipper.health()
    assert (code, health["kafka_connected"], health["kafka_auth_failed"]) == (200, True, None)
    assert shipper.stop() == 0
    final = shipper.final_ledger()
    assert (final["lines_sent"], final["lines_dropped"], final["balanced"]) == (3000, 0, True)
    options = security.options(config.load(shipper.conf).kafka.security)
    parts = read_topic(bootstrap, topic, timeout=60, expect=len(lines), options=options)
    assert list(parts) == [0]
    assert parts[0] == lines


# -- each failure, named -------------------------------------------------------------------
def failure_case(s: Secure, case: str, workdir: Path) -> tuple[str, dict[str, Any]]:
    """(bootstrap, security) that fails in the way ``case`` names."""
    wrong = workdir / "wrong-password"
    wrong.write_text(WRONG_PASSWORD)
    other_ca = sasl_ssl(s)
    other_ca["tls"]["ca_file"] = s.other_ca_file
    cases: dict[str, tuple[str, dict[str, Any]]] = {
        "wrong_password": (s.sasl_ssl_bootstrap, sasl_ssl(s, password_file=str(wrong))),
        "untrusted_certificate": (s.sasl_ssl_bootstrap, other_ca),
        # the broker's certificate names localhost only
        "hostname_mismatch": (s.sasl_ssl_bootstrap.replace("localhost", "127.0.0.1"), sasl_ssl(s)),
        "tls_to_plaintext_port": (
            s.plaintext_by_name,
            {"protocol": "ssl", "tls": {"ca_file": s.ca_file}},
        ),
        "plaintext_to_tls_port": (s.sasl_ssl_bootstrap, {"protocol": "plaintext"}),
        "client_certificate_rejected": (
            s.ssl_bootstrap,
            {"protocol": "ssl", "tls": {"ca_file": s.ca_file}},
        ),
        "sasl_not_enabled": (
            s.plaintext_by_name,
            {"protocol": "sasl_plaintext", "sasl": sasl_ssl(s)["sasl"]},
        ),
    }
    return cases[case]


FAILURES = [
    "wrong_password",
    "untrusted_certificate",
    "hostname_mismatch",
    "tls_to_plaintext_port",
    "plaintext_to_tls_port",
    "client_certificate_rejected",
    "sasl_not_enabled",
]


@pytest.mark.parametrize("case", FAILURES)
def test_each_failure_is_one_line_naming_it(
    secure: Secure, tmp_path: Path, case: str, start_shipper: Start
) -> None:
    """The daemon keeps running, retries, logs one kafka_auth_failed line saying which
    (rate-limited however often it retries), shows the reason on /health, and drops the
    lines it could not send as kafka_unavailable."""
    bootstrap, sec = failure_case(secure, case, tmp_path)
    append(tmp_path / "app.log", [b"never sent %d" % i for i in range(50)])
    shipper = start_shipper(shipper_config(bootstrap, f"t-{case}", tmp_path, sec), tmp_path)
    led = shipper.wait_for(
        lambda led: (
            led["events"].get("kafka_auth_failed", 0) >= 2
            and led["dropped"].get("kafka_unavailable") == 50
        ),
        what="two failed attempts and the lines dropped",
    )
    assert led["sent"] == 0
    lines = [e for e in shipper.events() if e["event"] == "kafka_auth_failed"]
    assert lines, shipper.logs()[-3000:]
    assert {e["reason"] for e in lines} == {case}
    first = datetime.fromisoformat(lines[0]["timestamp"])
    within = [
        e for e in lines if (datetime.fromisoformat(e["timestamp"]) - first).total_seconds() < 9
    ]
    assert len(within) == 1, "kafka_auth_failed is rate-limited to one line per reason"
    assert lines[0]["broker"] == bootstrap
    assert lines[0]["level"] == "warning"
    code, health = shipper.health()
    assert (code, health["status"], health["kafka_connected"]) == (200, "running", False)
    assert health["kafka_auth_failed"] == case
    assert shipper.proc.poll() is None
    assert shipper.stop() == 0
    final = shipper.final_ledger()
    assert (final["lines_sent"], final["dropped"], final["balanced"]) == (
        0,
        {"kafka_unavailable": 50},
        True,
    )


# -- validate --connect ------------------------------------------------------------------------
def test_validate_connect_ok_over_sasl_ssl_and_mutual_tls(secure: Secure, tmp_path: Path) -> None:
    """With the right settings, every broker and the topic are ok and validate exits 0."""
    topic = create_topic(secure, partitions=3)
    for name, bootstrap, sec in (
        ("sasl_ssl", secure.sasl_ssl_bootstrap, sasl_ssl(secure)),
        ("ssl", secure.ssl_bootstrap, mutual_tls(secure)),
    ):
        conf = write_conf(shipper_config(bootstrap, topic, tmp_path, sec), tmp_path / name)
        code, out = validate(conf, "--connect")
        assert code == 0, out
        assert f"  {bootstrap} (bootstrap): ok (TLSv1." in out
        assert f"  topic {topic}: 3 partitions; write allowed" in out
        assert "leader of partitions 0, 1, 2): ok (TLSv1." in out
        assert out.rstrip().endswith("kafka: ok")


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("denied", "FAILED not_authorized: the broker's ACLs do not allow us to write to it"),
        ("wrong_password", "(bootstrap): FAILED wrong_password: "),
        ("hostname_mismatch", "(bootstrap): FAILED hostname_mismatch: "),
        ("plaintext_to_tls_port", "(bootstrap): FAILED plaintext_to_tls_port: "),
        ("missing_topic", ": FAILED: does not exist"),
    ],
)
def test_validate_connect_fails_with_exit_3(
    secure: Secure, tmp_path: Path, case: str, says: str
) -> None:
    """A valid config that the cluster refuses exits 3 with a line saying why; the denied
    user connects fine but may not write."""
    topic = create_topic(secure)
    if case == "denied":
        bootstrap = secure.sasl_ssl_bootstrap
        sec = sasl_ssl(
            secure, username=secure.denied_user, password_file=secure.denied_password_file
        )
    elif case == "missing_topic":
        bootstrap, sec, topic = secure.sasl_ssl_bootstrap, sasl_ssl(secure), "t-not-there"
    else:
        bootstrap, sec = failure_case(secure, case, tmp_path)
    conf = write_conf(shipper_config(bootstrap, topic, tmp_path, sec), tmp_path / "c.yaml")
    code, out = validate(conf, "--connect")
    assert code == 3, out
    assert says in out
    assert out.rstrip().splitlines()[-1].startswith("kafka: FAILED")
    if case == "denied":
        assert f"  {bootstrap} (bootstrap): ok" in out


def test_a_mechanism_the_broker_does_not_enable_is_named(secure: Secure, tmp_path: Path) -> None:
    """unknown_mechanism: the test broker enables all three mechanisms we accept, so the
    check asks for one it does not have (OAUTHBEARER), the way a broker without SCRAM
    would answer SCRAM."""
    topic = create_topic(secure)
    conf = write_conf(
        shipper_config(secure.sasl_ssl_bootstrap, topic, tmp_path, sasl_ssl(secure)),
        tmp_path / "c.yaml",
    )
    kafka = config.load(conf).kafka
    assert kafka.security.sasl is not None
    other = replace(kafka.security.sasl, mechanism="OAUTHBEARER")
    kafka = replace(kafka, security=replace(kafka.security, sasl=other))
    out = io.StringIO()
    assert probe(kafka, out, timeout=10.0) is False
    assert (
        f"  {secure.sasl_ssl_bootstrap} (bootstrap): FAILED unknown_mechanism: " in out.getvalue()
    )


# -- the password, nowhere ---------------------------------------------------------------------
def _get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as e:
        return str(e.read().decode())


def test_the_password_appears_nowhere(secure: Secure, tmp_path: Path, start_shipper: Start) -> None:
    """With the right password (from a file) and a wrong one (from ${ENV}, then written in
    the file), at debug level: no log line, /metrics, /health, validate output or config
    error contains either password."""
    right = secure.secret("scram_password_file")
    assert len(right) >= 12
    topic = create_topic(secure)
    ok_dir, bad_dir = tmp_path / "ok", tmp_path / "bad"
    ok_dir.mkdir()
    bad_dir.mkdir()
    debug = {"log": {"level": "debug", "format": "json", "stats_interval": "1s"}}

    ok_cfg = shipper_config(secure.sasl_ssl_bootstrap, topic, ok_dir, sasl_ssl(secure), **debug)
    append(ok_dir / "app.log", [b"plain line %d" % i for i in range(100)])
    ok = start_shipper(ok_cfg, ok_dir)
    ok.wait_for(lambda led: led["sent"] == 100, what="lines sent")
    ok_http = _get(ok.metrics_url + "/metrics") + _get(ok.metrics_url + "/health")

    bad_sec = sasl_ssl(secure)
    del bad_sec["sasl"]["password_file"]
    bad_sec["sasl"]["password"] = "${KAFKA_TEST_PASSWORD}"
    bad_cfg = shipper_config(secure.sasl_ssl_bootstrap, topic, bad_dir, bad_sec, **debug)
    append(bad_dir / "app.log", [b"dropped line %d" % i for i in range(10)])
    env = {"KAFKA_TEST_PASSWORD": WRONG_PASSWORD}
    bad = start_shipper(bad_cfg, bad_dir, env=env)
    bad.wait_for(lambda led: led["events"].get("kafka_auth_failed", 0) >= 1, what="auth fail")
    bad_http = _get(bad.metrics_url + "/metrics") + _get(bad.metrics_url + "/health")
    assert '"kafka_auth_failed": "wrong_password"' in bad_http

    assert ok.stop() == 0
    assert bad.stop() == 0
    ok_logs, bad_logs = ok.logs(), bad.logs()
    assert '"event": "shutdown_complete"' in ok_logs
    assert '"event": "kafka_auth_failed"' in bad_logs
    ok_validate = validate(ok.conf, "--connect")[1]
    bad_validate = validate(bad.conf, "--connect", env=env)[1]
    assert "FAILED wrong_password" in bad_validate

    # The wrong password written in the file: a warning; beside an unknown key: an error.
    text = bad.conf.read_text().replace("${KAFKA_TEST_PASSWORD}", WRONG_PASSWORD)
    literal = tmp_path / "literal.yaml"
    literal.write_text(text)
    warned = validate(literal)[1]
    assert "config warning: kafka.security.sasl.password: written in the config file" in warned
    literal.write_text(text + "colour: blue\n")
    refused = validate(literal, "--connect")[1]
    assert "config error: colour: unknown key" in refused

    for text in (ok_http, bad_http, ok_logs, bad_logs, ok_validate, bad_validate, warned, refused):
        assert right not in text
        assert WRONG_PASSWORD not in text
