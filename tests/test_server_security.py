"""Bearer-token auth, TLS and mutual TLS with a CA made in the test."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from star_client import ClientConfig, ScorerCallError, ScorerClient
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc

TOKEN = "s3cret-token"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: Any, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def _issue(ca_key: Any, ca_cert: x509.Certificate, cn: str, server: bool) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("star test CA"))
        .issuer_name(_name("star test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _, ca_pem = _write(d / "ca", ca_key, ca)
    skey, scert = _write(d / "server", *_issue(ca_key, ca, "localhost", server=True))
    ckey, ccert = _write(d / "client", *_issue(ca_key, ca, "trainer", server=False))
    (d / "tokens").write_text(f"# accepted tokens\n{TOKEN}\n")
    return {"ca": ca_pem, "skey": skey, "scert": scert, "ckey": ckey, "ccert": ccert, "tokens": d / "tokens"}


@pytest.fixture(scope="module")
def tls_auth_server(start_server: Any, pki: dict[str, Path]) -> Iterator[Any]:
    creds = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
    srv = start_server(
        "--tls-cert",
        str(pki["scert"]),
        "--tls-key",
        str(pki["skey"]),
        "--auth-tokens-file",
        str(pki["tokens"]),
        credentials=creds,
    )
    yield srv
    srv.stop()


def test_tls_with_token_is_served(tls_auth_server: Any, pki: dict[str, Path]) -> None:
    cfg = ClientConfig(tls_ca_file=str(pki["ca"]), auth_token=TOKEN, deadline_s=20)
    with ScorerClient(tls_auth_server.address, cfg) as client:
        assert client.info().preset == "llama-guard-3"


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_is_unauthenticated(
    tls_auth_server: Any, pki: dict[str, Path], token: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STAR_AUTH_TOKEN", raising=False)
    cfg = ClientConfig(tls_ca_file=str(pki["ca"]), auth_token=token, deadline_s=20)
    with ScorerClient(tls_auth_server.address, cfg) as client:
        with pytest.raises(ScorerCallError) as err:
            client.info()
        assert err.value.code is grpc.StatusCode.UNAUTHENTICATED
        from star_contract.types import Conversation, ScoreRequest

        with pytest.raises(ScorerCallError) as err:
            client.score(ScoreRequest(Conversation.from_pair("q", "a")))
        assert err.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_client_cannot_talk_to_a_tls_server(tls_auth_server: Any) -> None:
    with grpc.insecure_channel(tls_auth_server.address) as ch, pytest.raises(grpc.RpcError) as err:
        pb_grpc.ScorerServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=3)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(start_server: Any, pki: dict[str, Path]) -> None:
    client_creds = grpc.ssl_channel_credentials(
        pki["ca"].read_bytes(), pki["ckey"].read_bytes(), pki["ccert"].read_bytes()
    )
    srv = start_server(
        "--tls-cert",
        str(pki["scert"]),
        "--tls-key",
        str(pki["skey"]),
        "--tls-client-ca",
        str(pki["ca"]),
        credentials=client_creds,
    )
    try:
        good = ClientConfig(
            tls_ca_file=str(pki["ca"]),
            tls_cert_file=str(pki["ccert"]),
            tls_key_file=str(pki["ckey"]),
            deadline_s=20,
        )
        with ScorerClient(srv.address, good) as client:  # no token needed: auth is off on this server
            assert client.info().backend == "local"
        no_cert = grpc.ssl_channel_credentials(pki["ca"].read_bytes())
        with grpc.secure_channel(srv.address, no_cert) as ch, pytest.raises(grpc.RpcError) as err:
            pb_grpc.ScorerServiceStub(ch).GetInfo(pb.GetInfoRequest(), timeout=3)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()
