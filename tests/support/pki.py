"""A throw-away test PKI made with the openssl command: CAs, a server certificate for
localhost, a client certificate and its key encrypted with a password."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]

_EXTENSIONS = """
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[server]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
[client]
basicConstraints = critical, CA:FALSE
extendedKeyUsage = clientAuth
"""


@dataclass(frozen=True)
class Pki:
    """Paths of the files ``make_pki`` wrote."""

    ca: Path  # the CA that signed server and client
    other_ca: Path  # an unrelated CA
    server_cert: Path  # CN and SAN localhost
    server_key: Path
    client_cert: Path  # CN shipper
    client_key: Path  # unencrypted
    client_key_encrypted: Path
    client_key_password: str
    other_key: Path  # a key that belongs to no certificate here


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Pki:
    """Write a test PKI into directory ``d`` (EC P-256 keys, valid for a day)."""
    cnf = d / "openssl.cnf"
    cnf.write_text(_EXTENSIONS)

    def key(name: str) -> Path:
        path = d / f"{name}.key"
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        return path

    def ca(name: str) -> tuple[Path, Path]:
        k, cert = key(name), d / f"{name}.pem"
        _openssl(
            "req", "-config", cnf, "-x509", "-new", "-key", k, "-subj", f"/CN={name}",
            "-days", "1", "-extensions", "ca", "-out", cert,
        )  # fmt: skip
        return cert, k

    def signed(name: str, subject: str, ext: str, issuer: tuple[Path, Path]) -> tuple[Path, Path]:
        k, csr, cert = key(name), d / f"{name}.csr", d / f"{name}.pem"
        _openssl("req", "-config", cnf, "-new", "-key", k, "-subj", subject, "-out", csr)
        _openssl(
            "x509", "-req", "-in", csr, "-CA", issuer[0], "-CAkey", issuer[1],
            "-set_serial", "1", "-days", "1", "-extfile", cnf, "-extensions", ext, "-out", cert,
        )  # fmt: skip
        return cert, k

    root = ca("ca")
    other = ca("other-ca")
    server = signed("server", "/CN=localhost", "server", root)
    client = signed("client", "/CN=shipper", "client", root)
    password = "key-pass-4711"
    encrypted = d / "client-encrypted.key"
    _openssl(
        "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", client[1],
        "-passout", f"pass:{password}", "-out", encrypted,
    )  # fmt: skip
    return Pki(
        ca=root[0],
        other_ca=other[0],
        server_cert=server[0],
        server_key=server[1],
        client_cert=client[0],
        client_key=client[1],
        client_key_encrypted=encrypted,
        client_key_password=password,
        other_key=key("stray"),
    )
