"""Container health check: asks the scorer's grpc.health.v1 service whether it is SERVING.

Used by the image's HEALTHCHECK and by the exec probes of the TLS component (Kubernetes' native gRPC
probes cannot speak TLS). Plaintext by default; with STAR_TLS_CERT set it connects over TLS trusting
that certificate (or STAR_TLS_CA), and when the server demands client certificates (STAR_TLS_CLIENT_CA
set) it presents the server's own key pair, which must then allow client authentication. Over TLS
the name checked in the server certificate is --server-name (default $STAR_TLS_SERVER_NAME): the
probe dials 127.0.0.1, which no certificate names, so one of the certificate's DNS names must be
given (the manifests use the headless Service's, star-scorer-headless.<namespace>.svc.cluster.local).
Exit status: 0 SERVING, 1 anything else (2 for a usage mistake).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Exit 0 when the local STAR scorer reports SERVING.")
    ap.add_argument(
        "--address",
        default=f"127.0.0.1:{os.environ.get('STAR_PORT', '50051')}",
        help="host:port of the scorer's gRPC port (default: 127.0.0.1:$STAR_PORT or 50051)",
    )
    ap.add_argument("--service", default="", help="health service name ('' = the whole server)")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    ap.add_argument(
        "--server-name",
        default=os.environ.get("STAR_TLS_SERVER_NAME", ""),
        help="over TLS: a DNS name the server certificate carries (default: $STAR_TLS_SERVER_NAME)",
    )
    args = ap.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cert = os.environ.get("STAR_TLS_CERT")
    if cert and not args.server_name:
        print(
            "healthcheck: STAR_TLS_CERT is set but no server name: set STAR_TLS_SERVER_NAME (or "
            "--server-name) to a DNS name in the server certificate",
            file=sys.stderr,
        )
        return 2
    if cert:
        ca = os.environ.get("STAR_TLS_CA") or cert
        mutual = bool(os.environ.get("STAR_TLS_CLIENT_CA"))
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca),
            private_key=_read(os.environ.get("STAR_TLS_KEY")) if mutual else None,
            certificate_chain=_read(cert) if mutual else None,
        )
        # The certificate names the Service, not 127.0.0.1.
        override = [("grpc.ssl_target_name_override", args.server_name)]
        channel = grpc.secure_channel(args.address, creds, options=override)
    else:
        channel = grpc.insecure_channel(args.address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as err:
        print(f"unhealthy: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1
    finally:
        channel.close()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"unhealthy: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
