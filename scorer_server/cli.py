"""`star-scorer serve`: serve a guard's STAR scores over gRPC.

Scoring a file against a running server is `star-client score`, and guarding text arriving on stdin is
`star-client moderate` (the client package, no torch needed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import NoReturn

from star_contract.cli_errors import USER_ERRORS, fail

MODERATE_MOVED = (
    "star-scorer moderate has moved to `star-client moderate` (same flags); this alias will be removed in "
    "the next release"
)


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
    # Listed for --help only: main() hands `moderate` to the client before parsing.
    sub.add_parser("moderate", help="moved to `star-client moderate` (alias until the next release)")
    return ap


def _exit_past_stuck_threads(code: int) -> int:
    """`code`, and exit now when a worker thread is still busy after the drain (a forward or a
    planning step that hangs would otherwise keep the process alive past its grace period)."""
    import logging
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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["moderate"]:
        _moderate_moved(argv[1:])
    args = build_parser().parse_args(argv)
    try:
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


def _moderate_moved(args: list[str]) -> NoReturn:
    """`star-scorer moderate ARGS`, kept for one release: one line on stderr saying where the command
    went, then this process becomes `star-client moderate ARGS` (stdin, stdout, stderr and the exit code
    are the client's; the server package never imports the client)."""
    print(MODERATE_MOVED, file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "star_client.cli", "moderate", *args])


if __name__ == "__main__":
    raise SystemExit(main())
