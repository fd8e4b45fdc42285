"""Bearer-token auth, TLS and mutual TLS with a CA made in the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from star_client import ClientConfig, ScorerCallError, ScorerClient
from star_proto import scorer_pb2 as pb
from star_proto import scorer_pb2_grpc as pb_grpc
from star_testing.pki import issue, make_ca

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d / "ca", "star test CA")
    scert, skey = issue(ca, d / "server", ["localhost", "127.0.0.1"])
    ccert, ckey = issue(ca, d / "client", ["trainer"])
    (d / "tokens").write_text(f"# accepted tokens\n{TOKEN}\n")
    return {
        "ca": ca.cert_path,
        "skey": skey,
        "scert": scert,
        "ckey": ckey,
        "ccert": ccert,
        "tokens": d / "tokens",
    }


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
