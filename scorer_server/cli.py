"""`star-scorer serve`: serve a guard's STAR scores over gRPC.

`star-scorer moderate`: guard text arriving on stdin against a running server, as it arrives.
Scoring a file against a running server is `star-client score` (the client package, no torch needed).
"""

from __future__ import annotations

import argparse
import asyncio

from star_contract.cli_errors import USER_ERRORS, fail


def build_parser() -> argparse.ArgumentParser:
    from scorer_server.config import add_server_arguments

    ap = argparse.ArgumentParser(prog="star-scorer", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="serve a guard over gRPC",
        description="Serve STAR scores from a guard model over gRPC (star.v1.ScorerService), with health, "
        "reflection and Prometheus metrics. Every flag can also be set as STAR_<FLAG_IN_UPPER_SNAKE>.",
    )
    add_server_arguments(serve)
    from star_client.moderate_cli import __doc__ as moderate_doc
    from star_client.moderate_cli import add_moderate_arguments

    moderate = sub.add_parser(
        "moderate",
        help="guard a response read from stdin as it arrives (live moderation)",
        description=moderate_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_moderate_arguments(moderate)
    return ap


def _exit_past_stuck_threads(code: int) -> int:
    """`code`, and exit now when a worker thread is still busy after the drain (a forward or a
    planning step that hangs would otherwise keep the process alive past its grace period)."""
    import logging
    import os
    import sys
    import threading

    busy = [t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if busy:
        logging.getLogger("star.server").warning("exiting past busy threads", extra={"threads": busy})
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "moderate":
        return _moderate(args)
    try:
        import os

        from scorer_server.config import config_from

        config = config_from(args)
        # Read once when torch loads OpenMP, so it is set before the server module imports torch.
        # Spinning threads starve a core-sharing event loop and planning thread (benchmarks/serve.py).
        os.environ.setdefault("OMP_WAIT_POLICY", config.process.omp_wait_policy.upper())
        from scorer_server.server import serve, setup_logging

        setup_logging(config.process.log_level)
        return _exit_past_stuck_threads(asyncio.run(serve(config)))
    except USER_ERRORS as exc:
        return fail(f"star-scorer {args.command}", exc)
    except KeyboardInterrupt:
        return 130


def _moderate(args: argparse.Namespace) -> int:
    import grpc

    from star_client.moderate_cli import moderate

    try:
        return asyncio.run(moderate(args))
    except (*USER_ERRORS, grpc.RpcError) as exc:
        return fail("star-scorer moderate", exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
