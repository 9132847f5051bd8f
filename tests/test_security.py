"""Connection security: the TLS context and SASL options we hand kafka-python, secrets that
never show, and the reason each way of failing to connect is given (against local servers
that fail the way brokers do)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from shipper.config import KafkaConfig, Secret, SecurityConfig, build
from shipper.kafka import compat, security
from shipper.kafka.compat import kerr
from tests.conftest import ROOT
from tests.support.pki import Pki, make_pki

PASSWORD = "S3cret-Pa55word-for-tests"


@pytest.fixture(name="pki", scope="module")
def fixture_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, an unrelated CA, a localhost server certificate and a client certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def sec(**raw: Any) -> SecurityConfig:
    return build(SecurityConfig, **raw)


def tls(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"ca_file": str(pki.ca), **more}


# -- what we hand kafka-python --------------------------------------------------------------
def test_tls_context_needs_tls12_verifies_the_broker_and_its_host_name(pki: Pki) -> None:
    """The context refuses TLS below 1.2, requires a verified certificate and checks the
    host name unless told otherwise."""
    ctx = security.tls_context(sec(protocol="ssl", tls=tls(pki)).tls)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "ca"),),)]


def test_host_name_check_is_off_only_when_asked(pki: Pki) -> None:
    """verify_hostname: false turns the name check off and keeps the chain check."""
    ctx = security.tls_context(sec(protocol="ssl", tls=tls(pki, verify_hostname=False)).tls)
    assert not ctx.check_hostname
    assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_without_ca_file_the_system_store_is_used() -> None:
    """No ca_file: the system's CA store, still verified."""
    ctx = security.tls_context(sec(protocol="ssl").tls)
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.cert_store_stats() == ssl.create_default_context().cert_store_stats()


@pytest.mark.parametrize(
    ("protocol", "expect"),
    [
        ("plaintext", {"security_protocol": "PLAINTEXT"}),
        ("ssl", {"security_protocol": "SSL", "ssl_check_hostname": True}),
        ("sasl_plaintext", {"security_protocol": "SASL_PLAINTEXT"}),
        ("sasl_ssl", {"security_protocol": "SASL_SSL", "ssl_check_hostname": True}),
    ],
)
def test_options_name_kafka_pythons_protocols(
    pki: Pki, protocol: str, expect: dict[str, Any]
) -> None:
    """Each protocol becomes kafka-python's name for it, with a context exactly for TLS and
    SASL settings exactly for SASL."""
    raw: dict[str, Any] = {"protocol": protocol}
    if "ssl" in protocol:
        raw["tls"] = tls(pki)
    if "sasl" in protocol:
        raw["sasl"] = {"username": "shipper", "password": PASSWORD}
    got = security.options(sec(**raw))
    assert {k: v for k, v in got.items() if k in expect} == expect
    assert isinstance(got.get("ssl_context"), ssl.SSLContext) == ("ssl" in protocol)
    assert ("sasl_mechanism" in got) == ("sasl" in protocol)


def test_sasl_password_is_sent_but_never_shown() -> None:
    """kafka-python gets the password itself; printing the options shows *** instead."""
    got = security.options(
        sec(
            protocol="sasl_plaintext",
            sasl={"mechanism": "SCRAM-SHA-256", "username": "u", "password": PASSWORD},
        )
    )
    assert got["sasl_mechanism"] == "SCRAM-SHA-256"
    assert got["sasl_plain_username"] == "u"
    assert got["sasl_plain_password"] == PASSWORD
    assert got["sasl_plain_password"].encode() == PASSWORD.encode()
    for shown in (repr(got), str(got), f"{got}", str(got["sasl_plain_password"])):
        assert PASSWORD not in shown


def test_config_repr_and_describe_hold_no_secret(pki: Pki) -> None:
    """The whole Kafka section printed, and the security summary logged at start, never
    contain the SASL password or the key password."""
    cfg = build(
        KafkaConfig,
        bootstrap_servers=["localhost:9093"],
        topic="logs",
        security={
            "protocol": "sasl_ssl",
            "tls": tls(
                pki,
                cert_file=str(pki.client_cert),
                key_file=str(pki.client_key_encrypted),
                key_password=pki.client_key_password,
            ),
            "sasl": {"username": "shipper", "password": PASSWORD},
        },
    )
    described = security.describe(cfg.security)
    assert described == {
        "protocol": "sasl_ssl",
        "ca_file": str(pki.ca),
        "verify_hostname": True,
        "client_certificate": str(pki.client_cert),
        "mechanism": "SCRAM-SHA-512",
        "username": "shipper",
    }
    for text in (repr(cfg), str(cfg), repr(described)):
        assert PASSWORD not in text
        assert pki.client_key_password not in text


def test_encrypted_client_key_loads_with_its_password(pki: Pki) -> None:
    """An encrypted key is opened with key_password; without it, loading fails at once
    instead of prompting on a terminal."""
    with_pw = sec(
        protocol="ssl",
        tls=tls(
            pki,
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key_encrypted),
            key_password=pki.client_key_password,
        ),
    )
    security.tls_context(with_pw.tls)
    without = replace(with_pw.tls, key_password=None)
    with pytest.raises(ssl.SSLError):
        security.tls_context(without)
    assert security.tls_problems(without) == [
        ("key_password_file", f"{pki.client_key_encrypted} is encrypted: give its password")
    ]


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ("wrong_password", "key_password_file", "the password does not decrypt"),
        ("foreign_key", "key_file", "is not the key of"),
        ("ca_not_a_cert", "ca_file", "no usable CA certificate"),
    ],
)
def test_tls_file_problems_name_the_key(pki: Pki, change: str, key: str, says: str) -> None:
    """A wrong key password, a key of another certificate and a CA file without a
    certificate are each reported under the key to fix."""
    t = sec(
        protocol="ssl",
        tls=tls(
            pki,
            cert_file=str(pki.client_cert),
            key_file=str(pki.client_key_encrypted),
            key_password=pki.client_key_password,
        ),
    ).tls
    if change == "wrong_password":
        t = replace(t, key_password=Secret("not-it"))
    elif change == "foreign_key":
        t = replace(t, key_file=str(pki.other_key), key_password=None)
    else:
        t = replace(t, ca_file=str(pki.client_key))
    ((got_key, message),) = security.tls_problems(t)
    assert got_key == key
    assert says in message
    assert pki.client_key_password not in message


# -- why a connection failed: real failures from local servers ------------------------------
class FakeServer:
    """One-connection TCP server on localhost whose handler plays a broker's part."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._handler = handler
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            self._handler(conn)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(10)


def drain(conn: socket.socket) -> None:
    """Read what the client sends until it hangs up, so our close sends FIN, not RST."""
    conn.settimeout(10.0)
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass


def plaintext_port(conn: socket.socket) -> None:
    """A plaintext listener given a TLS ClientHello: it reads a bogus size and hangs up."""
    conn.recv(65536)


def tls_port_alert(conn: socket.socket) -> None:
    """A Java TLS listener given plaintext: a fatal TLS alert record, then it hangs up."""
    conn.recv(65536)
    conn.sendall(b"\x15\x03\x03\x00\x02\x02\x0a")  # alert(21) TLS1.2 fatal unexpected_message


def tls_server(pki: Pki, *, client_cert: bool = False) -> Callable[[socket.socket], None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    if client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(pki.ca)

    def handle(conn: socket.socket) -> None:
        with conn.dup() as raw:  # wrap_socket takes conn's descriptor, also on failure
            try:
                with ctx.wrap_socket(conn, server_side=True) as s:
                    drain(s)
            except (ssl.SSLError, OSError):
                drain(raw)  # read the client out, so our alert is not lost to a reset

    return handle


@pytest.fixture(name="serve")
def fixture_serve() -> Iterator[Callable[[Callable[[socket.socket], None]], FakeServer]]:
    """Start fake servers; close them after the test."""
    servers: list[FakeServer] = []

    def start(handler: Callable[[socket.socket], None]) -> FakeServer:
        servers.append(FakeServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def ask(host: str, port: int, **security_raw: Any) -> compat.BrokerReply:
    cfg = build(
        KafkaConfig,
        bootstrap_servers=[f"{host}:{port}"],
        topic="logs",
        security=security_raw,
    )
    return compat.ask_metadata(cfg, f"{host}:{port}", "logs", timeout=5.0)


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("tls_to_plaintext_port", "tls_to_plaintext_port"),
        ("plaintext_to_tls_port", "plaintext_to_tls_port"),
        ("untrusted_certificate", "untrusted_certificate"),
        ("hostname_mismatch", "hostname_mismatch"),
        ("no_client_certificate", "client_certificate_rejected"),
    ],
)
def test_each_tls_failure_gets_its_reason(
    pki: Pki,
    serve: Callable[[Callable[[socket.socket], None]], FakeServer],
    case: str,
    expect: str,
) -> None:
    """A real failed connection through our connection manager names what went wrong."""
    host = "localhost"
    raw: dict[str, Any] = {"protocol": "ssl", "tls": tls(pki)}
    if case == "tls_to_plaintext_port":
        server = serve(plaintext_port)
    elif case == "plaintext_to_tls_port":
        server, raw = serve(tls_port_alert), {"protocol": "plaintext"}
    elif case == "untrusted_certificate":
        server = serve(tls_server(pki))
        raw = {"protocol": "ssl", "tls": {"ca_file": str(pki.other_ca)}}
    elif case == "hostname_mismatch":
        server, host = serve(tls_server(pki)), "127.0.0.1"
    else:
        server = serve(tls_server(pki, client_cert=True))
    reply = ask(host, server.port, **raw)
    assert reply.error is not None
    assert security.reason(reply.error) == expect, repr(reply.error)
    assert expect in security.AUTH_REASONS


def test_tls_with_a_client_certificate_gets_through(
    pki: Pki, serve: Callable[[Callable[[socket.socket], None]], FakeServer]
) -> None:
    """With the CA and a client certificate the TLS handshake succeeds (the fake server then
    says nothing, so the Kafka handshake times out: not a security failure)."""
    server = serve(tls_server(pki, client_cert=True))
    t = tls(
        pki,
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key_encrypted),
        key_password=pki.client_key_password,
    )
    cfg = build(
        KafkaConfig,
        bootstrap_servers=[f"localhost:{server.port}"],
        topic="logs",
        security={"protocol": "ssl", "tls": t},
    )
    reply = compat.ask_metadata(cfg, f"localhost:{server.port}", "logs", timeout=1.0)
    assert reply.error is not None
    assert security.reason(reply.error) == "timeout", repr(reply.error)


def test_nothing_listening_is_not_a_security_failure() -> None:
    """A refused connection is connection_refused, which is not a kafka_auth_failed reason."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    reply = ask("127.0.0.1", port, protocol="plaintext")
    assert reply.error is not None
    assert security.reason(reply.error) == "connection_refused"
    assert "connection_refused" not in security.AUTH_REASONS


def _handshake_failed(inner: BaseException) -> BaseException:
    """The exception kafka-python raises when a TLS handshake fails: the SSL error is its
    context (it raises inside ``except``)."""
    outer: BaseException = kerr.KafkaConnectionError(f"Handshake failed: {inner}")
    outer.__context__ = inner
    return outer


def _expired() -> ssl.SSLCertVerificationError:
    e = ssl.SSLCertVerificationError(1, "certificate verify failed: certificate has expired")
    e.verify_code = 10
    return e


@pytest.mark.parametrize(
    ("exc", "expect"),
    [
        (
            kerr.SaslAuthenticationFailedError(
                "Authentication failed during authentication due to invalid credentials with "
                "SASL mechanism SCRAM-SHA-512"
            ),
            "wrong_password",
        ),
        (kerr.UnsupportedSaslMechanismError(), "unknown_mechanism"),
        (kerr.IllegalSaslStateError(), "sasl_not_enabled"),
        (kerr.TopicAuthorizationFailedError(), "not_authorized"),
        (kerr.ClusterAuthorizationFailedError(), "not_authorized"),
        (_handshake_failed(_expired()), "certificate_expired"),
        (kerr.InvalidReceiveError("Invalid frame length: 352518912"), "plaintext_to_tls_port"),
        (kerr.InvalidReceiveError("Invalid frame length: 1048577000"), "connection_failed"),
        (kerr.KafkaConnectionError("111 ECONNREFUSED"), "connection_refused"),
        (kerr.KafkaConnectionError("DNS Resolution failure"), "unknown_host"),
        (kerr.KafkaTimeoutError("Timeout during ApiVersions check"), "timeout"),
        (kerr.KafkaConnectionError("socket disconnected"), "connection_closed"),
        (RuntimeError("something else"), "connection_failed"),
    ],
)
def test_kafka_errors_map_to_reasons(exc: BaseException, expect: str) -> None:
    """The exceptions kafka-python raises for SASL, ACL and socket failures get their reason
    (these are the exact ones seen from a real broker; tests/integration checks them live)."""
    assert security.reason(exc) == expect
    assert expect in security.REASONS


def test_every_security_reason_is_explained() -> None:
    """Each reason logged as kafka_auth_failed has an explanation for the operator."""
    assert security.REASONS.keys() >= security.AUTH_REASONS


def test_every_security_reason_is_in_the_readme() -> None:
    """Each kafka_auth_failed reason is listed in the README for operators."""
    readme = (ROOT / "README.md").read_text()
    missing = [r for r in sorted(security.AUTH_REASONS) if f"`{r}`" not in readme]
    assert not missing
