"""A throwaway certificate authority for tests and the container smoke test (needs `cryptography`).

`make_ca(dir)` writes ca.crt / ca.key; `issue(ca, dir, names)` writes tls.crt / tls.key for a leaf
certificate carrying `names` as DNS names, usable for both server and client authentication (the TLS
component's probe presents the server's own pair when the server demands client certificates).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CA:
    """A CA's key and certificate, and where its certificate was written."""

    key: Any
    cert: x509.Certificate
    cert_path: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _validity(b: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return b.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=1)
    )


def make_ca(out: Path, cn: str = "star throwaway CA") -> CA:
    """A self-signed CA valid for a day; writes out/ca.crt and out/ca.key."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    )
    cert = _validity(builder).sign(key, hashes.SHA256())
    (out / "ca.key").write_bytes(_pem_key(key))
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(key, cert, out / "ca.crt")


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue(ca: CA, out: Path, names: list[str]) -> tuple[Path, Path]:
    """A leaf certificate for `names` (DNS names or IP addresses; the first is also the CN), for server
    and client authentication; writes out/tls.crt and out/tls.key and returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    )
    cert = _validity(builder).sign(ca.key, hashes.SHA256())
    (out / "tls.key").write_bytes(_pem_key(key))
    (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / "tls.crt", out / "tls.key"
