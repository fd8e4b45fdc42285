"""`star-scorer serve`: serve a guard's STAR scores over gRPC. `star-scorer check-guard`: check that a
preset fits a guard checkpoint before serving it.

Scoring a file against a running server is `star-client score`, and guarding text arriving on stdin is
`star-client moderate` (the client package, no torch needed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import NoReturn

from star_contract.cli_errors import RUN_ERRORS, USER_ERRORS, fail

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
    add_check_guard_arguments(
        sub.add_parser(
            "check-guard",
            help="check that a preset fits a guard checkpoint",
            description="Check that a preset fits a guard checkpoint: on a few fixed probe conversations, "
            "does the guard, decoding greedily, write the preset's forced text and then a verdict word, "
            "and do the verdict classes hold most of the probability mass where the scorer reads? Exit "
            "code 0 when every probe fits, 3 when one does not, 2 on a bad flag or a guard the loader "
            "refuses (docs/guards.md).",
        )
    )
    # Listed for --help only: main() hands `moderate` to the client before parsing.
    sub.add_parser("moderate", help="moved to `star-client moderate` (alias until the next release)")
    return ap


def add_check_guard_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dir", metavar="DIR", help="the guard model directory")
    ap.add_argument("--preset", required=True, help="the preset to check (docs/guards.md), or custom")
    ap.add_argument("--template-file", default="", help="Jinja chat template that replaces the tokenizer's")
    ap.add_argument("--template-kwargs", default="", help="JSON object of chat-template keyword arguments")
    ap.add_argument("--safe-word", default="", help="verdict word of a safe response; overrides the preset's")
    ap.add_argument("--unsafe-word", default="", help="verdict word of an unsafe response; overrides it too")
    ap.add_argument(
        "--verdict-prefix", default="auto", help="forced text before the verdict; auto: the preset's"
    )
    ap.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")
    ap.add_argument("--dtype", default="float32", help="weights dtype: float32, bfloat16, float16")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="tokens to decode greedily per probe")
    ap.add_argument(
        "--min-class-mass",
        type=float,
        default=0.5,
        help="the verdict classes must hold more than this share of the probability mass (default 0.5)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object per probe instead")


def check_guard_main(args: argparse.Namespace) -> int:
    """`star-scorer check-guard`: 0 when every probe fits, 3 when one does not, 2 on a user error."""
    prog = "star-scorer check-guard"
    try:
        from transformers.utils import logging as hf_logging

        from scorer_server.check_guard import PROBES, check_guard, render_report, report_json
        from scorer_server.config import GuardSettings
        from scorer_server.guards.loader import load_guard
        from star_contract.model_dir import require_model_dir

        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, not {args.max_new_tokens}")
        if not 0.0 <= args.min_class_mass <= 1.0:
            raise ValueError(f"--min-class-mass must be between 0 and 1, not {args.min_class_mass}")
        require_model_dir(args.dir, "the guard directory")
        hf_logging.disable_progress_bar()  # no "Loading weights" bar around the report
        settings = GuardSettings(
            path=args.dir,
            preset=args.preset,
            template_file=args.template_file,
            template_kwargs=args.template_kwargs,
            safe_word=args.safe_word,
            unsafe_word=args.unsafe_word,
            verdict_prefix=args.verdict_prefix,
            dtype=args.dtype,
            device=args.device,
        )
        guard = load_guard(settings.guard_config())
        reports = check_guard(guard, PROBES, args.max_new_tokens, args.min_class_mass)
    except RUN_ERRORS as exc:
        return fail(prog, exc)
    if args.json:
        for report in reports:
            print(report_json(report))
    else:
        print(render_report(guard, reports, args.max_new_tokens))
    return 0 if all(r.fits for r in reports) else 3


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
    if args.command == "check-guard":
        return check_guard_main(args)
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
