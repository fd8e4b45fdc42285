"""Container health check: asks the scorer's grpc.health.v1 service whether it is SERVING.

Used by the image's HEALTHCHECK and by the exec probes of the TLS component (Kubernetes' native gRPC
probes cannot speak TLS). Plaintext by default; with STAR_TLS_CERT set it connects over TLS trusting
that certificate (or STAR_TLS_CA), and when the server demands client certificates (STAR_TLS_CLIENT_CA
set) it presents the server's own key pair, which must then allow client authentication.
Exit status: 0 SERVING, 1 anything else.
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
    args = ap.parse_args(argv)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    cert = os.environ.get("STAR_TLS_CERT")
    if cert:
        ca = os.environ.get("STAR_TLS_CA") or cert
        mutual = bool(os.environ.get("STAR_TLS_CLIENT_CA"))
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(ca),
            private_key=_read(os.environ.get("STAR_TLS_KEY")) if mutual else None,
            certificate_chain=_read(cert) if mutual else None,
        )
        # The certificate names the Service, not 127.0.0.1.
        name = os.environ.get("STAR_TLS_SERVER_NAME", "star-scorer")
        channel = grpc.secure_channel(args.address, creds, options=[("grpc.ssl_target_name_override", name)])
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
