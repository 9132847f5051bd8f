"""How to reach a secured Kafka: kafka-python's connection options from ``kafka.security``,
and one short reason for each way a connection can fail.

``options`` gives the options by the names kafka-python's producer and consumer document
(``security_protocol``, ``ssl_context``, ``sasl_*``), so a test consumer can be configured
exactly like the shipper. ``reason`` turns the exception of a failed connection into one of
``REASONS``; those in ``AUTH_REASONS`` are logged as ``kafka_auth_failed``. Nothing here
imports kafka-python at module level: ``config`` checks TLS files with ``tls_problems``
without paying for it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from shipper.config import SecurityConfig, TlsConfig

__all__ = [
    "AUTH_REASONS",
    "REASONS",
    "describe",
    "exception_chain",
    "options",
    "reason",
    "tls_context",
    "tls_problems",
]

#: Our protocol names and kafka-python's.
PROTOCOLS: Final = {
    "plaintext": "PLAINTEXT",
    "ssl": "SSL",
    "sasl_plaintext": "SASL_PLAINTEXT",
    "sasl_ssl": "SASL_SSL",
}

#: Every reason ``reason`` returns, with what it means for the operator.
REASONS: Final = {
    # security: logged as kafka_auth_failed and shown on /health
    "wrong_password": "SASL authentication failed: wrong username or password "
    "(or the user has no credentials for this mechanism)",
    "unknown_mechanism": "the broker does not enable this SASL mechanism",
    "sasl_not_enabled": "SASL sent to a listener without SASL (protocol should be ssl or "
    "plaintext for this port)",
    "untrusted_certificate": "the broker's certificate is not signed by a trusted CA "
    "(check tls.ca_file)",
    "hostname_mismatch": "the broker's certificate does not name the host connected to "
    "(connect by the name in the certificate)",
    "certificate_expired": "the broker's certificate has expired or is not valid yet",
    "client_certificate_rejected": "the broker refused our client certificate, or needs one "
    "(tls.cert_file and tls.key_file)",
    "tls_to_plaintext_port": "TLS sent to a port that does not speak TLS (protocol should "
    "be plaintext or sasl_plaintext for this port)",
    "plaintext_to_tls_port": "plaintext sent to a TLS port (protocol should be ssl or "
    "sasl_ssl for this port)",
    "tls_handshake_failed": "the TLS handshake failed (protocol version or ciphers)",
    "not_authorized": "the broker's ACLs do not allow this",
    # not security: the broker is just not there (kafka_unavailable)
    "connection_refused": "nothing listens on that port",
    "unknown_host": "the host name does not resolve",
    "timeout": "no answer in time",
    "connection_closed": "the broker closed the connection",
    "connection_failed": "the connection failed",
}

AUTH_REASONS: Final = frozenset(
    {
        "wrong_password",
        "unknown_mechanism",
        "sasl_not_enabled",
        "untrusted_certificate",
        "hostname_mismatch",
        "certificate_expired",
        "client_certificate_rejected",
        "tls_to_plaintext_port",
        "plaintext_to_tls_port",
        "tls_handshake_failed",
        "not_authorized",
    }
)

# OpenSSL verify codes (X509_V_ERR_*) with a reason of their own; any other is untrusted.
_VERIFY_CODES: Final = {
    62: "hostname_mismatch",
    63: "hostname_mismatch",  # e-mail address
    64: "hostname_mismatch",  # IP address
    9: "certificate_expired",  # not yet valid
    10: "certificate_expired",
}
# Kafka protocol error codes.
_KAFKA_CODES: Final = {
    58: "wrong_password",  # SASL_AUTHENTICATION_FAILED
    33: "unknown_mechanism",  # UNSUPPORTED_SASL_MECHANISM
    34: "sasl_not_enabled",  # ILLEGAL_SASL_STATE
    29: "not_authorized",  # TOPIC_AUTHORIZATION_FAILED
    30: "not_authorized",  # GROUP_AUTHORIZATION_FAILED
    31: "not_authorized",  # CLUSTER_AUTHORIZATION_FAILED
}
# Alerts a TLS server sends when it rejects (or misses) the client's certificate.
_CLIENT_CERT_ALERTS: Final = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)
# What OpenSSL says when the other end does not speak TLS at all.
_NOT_TLS: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)
_TLS_CLOSED: Final = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
# A TLS record starts with its content type (20-23) and major version 3. Read as the 4-byte
# size of a Kafka response, that is a frame of 335-402 MB: a TLS port answering plaintext.
_FRAME_RE: Final = re.compile(r"frame length: (-?\d+)")
# kafka-python reports socket failures as text ("111 ECONNREFUSED", "DNS Resolution failure").
_SOCKET_TEXT: Final = (
    ("ECONNREFUSED", "connection_refused"),
    ("DNS", "unknown_host"),
    ("timed out", "timeout"),
    ("disconnected", "connection_closed"),
)


class _Redacted(str):
    """A password handed to kafka-python: shows as *** wherever it is printed."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__


# -- building the connection ------------------------------------------------------------
def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """A client SSLContext: TLS 1.2 or later, the broker's certificate verified against
    ``ca_file`` (or the system store), its host name checked unless turned off, and our own
    certificate for mutual TLS when given. Raises ssl.SSLError or OSError on bad files."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = tls.verify_hostname
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=tls.ca_file)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None:
        secret = tls.key_password.reveal() if tls.key_password is not None else ""

        # A callable, never None: OpenSSL would otherwise prompt on the terminal for the
        # password of an encrypted key, and a daemon would hang there.
        def password() -> str:
            return secret

        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=password)
    return ctx


def options(sec: SecurityConfig) -> dict[str, Any]:
    """kafka-python's connection options (as its KafkaProducer/KafkaConsumer name them)."""
    out: dict[str, Any] = {"security_protocol": PROTOCOLS[sec.protocol]}
    if sec.uses_tls:
        out["ssl_context"] = tls_context(sec.tls)
        out["ssl_check_hostname"] = sec.tls.verify_hostname
    if sec.uses_sasl and sec.sasl is not None:
        password = sec.sasl.password
        out["sasl_mechanism"] = sec.sasl.mechanism
        out["sasl_plain_username"] = sec.sasl.username
        out["sasl_plain_password"] = _Redacted(password.reveal() if password else "")
    return out


def describe(sec: SecurityConfig) -> dict[str, Any]:
    """What the security settings are, for a log line (never a secret)."""
    out: dict[str, Any] = {"protocol": sec.protocol}
    if sec.uses_tls:
        t = sec.tls
        out["ca_file"] = t.ca_file or "system"
        out["verify_hostname"] = t.verify_hostname
        out["client_certificate"] = t.cert_file
    if sec.uses_sasl and sec.sasl is not None:
        out["mechanism"] = sec.sasl.mechanism
        out["username"] = sec.sasl.username
    return out


def tls_problems(tls: TlsConfig) -> list[tuple[str, str]]:
    """Build the TLS context once and say what is wrong with the files, as (key, message)."""
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if tls.ca_file is not None:
            ctx.load_verify_locations(cafile=tls.ca_file)
    except (ssl.SSLError, OSError, ValueError) as e:
        return [("ca_file", f"no usable CA certificate in {tls.ca_file}: {_ssl_text(e)}")]
    try:
        tls_context(tls)
    except (ssl.SSLError, OSError, ValueError) as e:
        return [_cert_problem(tls, e)]
    return []


def _cert_problem(tls: TlsConfig, e: BaseException) -> tuple[str, str]:
    text = _ssl_text(e)
    encrypted = _encrypted_key(tls.key_file)
    if encrypted and tls.key_password is None:
        return ("key_password_file", f"{tls.key_file} is encrypted: give its password")
    if "KEY_VALUES_MISMATCH" in text.upper():
        return ("key_file", f"{tls.key_file} is not the key of {tls.cert_file}")
    if encrypted:  # OpenSSL says only "PEM lib" when the password is wrong
        return ("key_password_file", f"the password does not decrypt {tls.key_file}")
    return ("cert_file", f"cannot load {tls.cert_file} with {tls.key_file}: {text}")


def _encrypted_key(path: str | None) -> bool:
    if path is None:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return False
    return b"ENCRYPTED" in head


def _ssl_text(e: BaseException) -> str:
    reason_ = getattr(e, "reason", None)
    text = str(e.args[1]) if isinstance(e, OSError) and len(e.args) > 1 else str(e)
    return f"{reason_}: {text}" if reason_ and reason_ not in text else text


# -- why a connection failed --------------------------------------------------------------
def reason(exc: BaseException) -> str:
    """One of ``REASONS`` for the exception of a failed connection (or request).

    Looks through the exception, its causes and the exceptions kafka-python carries as
    arguments; certificate verdicts first, then Kafka's own error codes, then TLS and
    socket symptoms.
    """
    from shipper.kafka.compat import kerr  # noqa: PLC0415  # kafka-python is loaded by now

    chain = list(exception_chain(exc))
    handshake = any("Handshake failed" in str(e) for e in chain)
    for judge in (_certificate, _kafka_code, _tls, _socket):
        for e in chain:
            why = judge(e, handshake, kerr)
            if why is not None:
                return why
    return "connection_failed"


def _certificate(e: BaseException, _handshake: bool, _kerr: Any) -> str | None:
    if isinstance(e, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(e.verify_code, "untrusted_certificate")
    return None


def _kafka_code(e: BaseException, _handshake: bool, kerr: Any) -> str | None:
    if isinstance(e, kerr.AuthorizationError):
        return "not_authorized"
    if isinstance(e, kerr.KafkaError):
        return _KAFKA_CODES.get(getattr(e, "errno", None) or 0)
    return None


def _tls(e: BaseException, handshake: bool, _kerr: Any) -> str | None:
    if isinstance(e, ssl.SSLError):
        why = str(e.reason or "")
        if why in _CLIENT_CERT_ALERTS:
            return "client_certificate_rejected"
        if why in _NOT_TLS or (handshake and isinstance(e, _TLS_CLOSED)):
            return "tls_to_plaintext_port"  # closed before the handshake: not a TLS port
        return None if isinstance(e, _TLS_CLOSED) else "tls_handshake_failed"
    if handshake and isinstance(e, ConnectionResetError | BrokenPipeError):
        return "tls_to_plaintext_port"
    m = _FRAME_RE.search(str(e))
    if m and _looks_like_tls(int(m.group(1))):
        return "plaintext_to_tls_port"
    return None


def _socket(e: BaseException, _handshake: bool, kerr: Any) -> str | None:
    if isinstance(e, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(e, TimeoutError | kerr.KafkaTimeoutError):
        return "timeout"
    text = str(e)
    for needle, why in _SOCKET_TEXT:
        if needle in text:
            return why
    return "connection_closed" if isinstance(e, ConnectionError) else None


def _looks_like_tls(size: int) -> bool:
    first, major = (size >> 24) & 0xFF, (size >> 16) & 0xFF
    return 20 <= first <= 23 and major == 3


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what caused it, and exceptions it carries as arguments (kafka-python
    wraps socket errors as ``KafkaConnectionError(error)``), each once, at most 16. The one
    walk over an error's chain: reasons, ``not_kafka`` and dropping frames all use it."""
    seen: set[int] = set()
    todo = [exc]
    while todo and len(seen) < 16:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(a for a in e.args if isinstance(a, BaseException))
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
