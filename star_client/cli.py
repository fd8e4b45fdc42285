"""`star-client`: score a JSONL file of conversations against a running scorer, show what it serves, or
guard a response read from stdin as it arrives (`star-client moderate`).

Needs only the client and the contract packages (no torch): a trainer or data machine can run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from star_client.moderate_cli import __doc__ as MODERATE_HELP
from star_client.moderate_cli import add_moderate_arguments
from star_contract.cli_errors import USER_ERRORS, fail

SCORE_HELP = """\
Input: one JSON object per line, either {"messages": [{"role": ..., "content": ...}, ...]} (the last
message is the assistant response to score) or {"prompt": ..., "response": ...}. Optional per line:
"id" (copied to the output), "offsets" (explicit cut character offsets).
Output: one JSON object per input line, in input order:
{"id": ..., "segments": [[end_offset, p_safe], ...], "guard_tokens": N}.
"""


def _add_client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server", required=True, help="scorer address(es): HOST:PORT[,HOST:PORT...] or dns:///NAME:PORT"
    )
    p.add_argument("--deadline", type=float, default=120.0, help="seconds per request, retries included")
    p.add_argument("--tls", action="store_true", help="connect with TLS (implied by --tls-ca/--tls-cert)")
    p.add_argument("--tls-ca", help="CA bundle (PEM) that signed the server certificate")
    p.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--tls-key", help="client private key (PEM) for mutual TLS")
    p.add_argument("--tls-server-name", help="name to check the server certificate against")
    p.add_argument("--token-file", help="file holding the bearer token (default: $STAR_AUTH_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="star-client", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    score = sub.add_parser(
        "score",
        help="score a JSONL file of conversations against a server",
        description="Score conversations with a running scorer.\n\n" + SCORE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_client_args(score)
    score.add_argument("--in", dest="input", required=True, help="input JSONL file")
    score.add_argument("--out", required=True, help="output JSONL file")
    cut = score.add_mutually_exclusive_group()
    cut.add_argument("--cut-words", type=int, default=5, help="a cut after every M words (default 5)")
    cut.add_argument("--cut-tokens", type=int, help="a cut after every N guard tokens instead")
    score.add_argument(
        "--convention",
        choices=("raw", "published"),
        default="raw",
        help="how P(safe) is read: raw (the paper's formula, default) or published (the authors' released "
        "code: space-joined words, generate()'s processed scores; the server needs the local backend)",
    )
    score.add_argument("--priority", type=int, default=0, help="higher is served first (default 0)")
    score.add_argument("--max-in-flight", type=int, default=256, help="requests outstanding at once")
    info = sub.add_parser(
        "info", help="print what a server serves (JSON)", description="Print GetInfo as JSON."
    )
    _add_client_args(info)
    moderate = sub.add_parser(
        "moderate",
        help="guard a response read from stdin as it arrives (live moderation)",
        description=MODERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_moderate_arguments(moderate)
    return ap


def _client_config(args: argparse.Namespace, **extra: Any) -> Any:
    from star_client import ClientConfig

    return ClientConfig(
        addresses=tuple(a for a in args.server.split(",") if a),
        deadline_s=args.deadline,
        tls=args.tls,
        tls_ca_file=args.tls_ca,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        tls_server_name=args.tls_server_name,
        auth_token_file=args.token_file,
        **extra,
    )


def _read_requests(path: Path, args: argparse.Namespace) -> Iterator[tuple[Any, Any]]:
    from star_contract.types import Convention, Conversation, CutKind, CutSpec, ScoreRequest

    convention = Convention(args.convention)
    default = (
        CutSpec(CutKind.GUARD_TOKENS, args.cut_tokens)
        if args.cut_tokens
        else CutSpec(CutKind.WORDS, args.cut_words)
    )
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if "messages" in row:
                    conv = Conversation.from_dicts(row["messages"])
                else:
                    conv = Conversation.from_pair(str(row["prompt"]), str(row["response"]))
                cuts = (
                    CutSpec(CutKind.OFFSETS, offsets=tuple(row["offsets"])) if "offsets" in row else default
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{path}:{n}: not a conversation ({exc}); see `star-client score --help`"
                ) from None
            yield row.get("id", n), ScoreRequest(conv, cuts, convention=convention)


async def _score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from star_client import AsyncScorerClient

    rows = list(_read_requests(Path(args.input), args))
    config = _client_config(args, max_in_flight=args.max_in_flight)
    results: list[Any] = [None] * len(rows)
    async with AsyncScorerClient(config=config) as client:
        bar = tqdm(total=len(rows), unit="conv", desc="scoring", file=sys.stderr)

        async def one(i: int) -> None:
            results[i] = await client.score(rows[i][1], args.priority)
            bar.update(1)

        await asyncio.gather(*(one(i) for i in range(len(rows))))
        bar.close()
    with Path(args.out).open("w") as out:
        for (rid, _), s in zip(rows, results, strict=True):
            segs = [[seg.end, seg.p_safe] for seg in s.segments]
            out.write(json.dumps({"id": rid, "segments": segs, "guard_tokens": s.guard_tokens}) + "\n")
    print(f"scored {len(rows)} conversations -> {args.out}", file=sys.stderr)
    return 0


async def _info(args: argparse.Namespace) -> int:
    import dataclasses

    from star_client import AsyncScorerClient

    async with AsyncScorerClient(config=_client_config(args)) as client:
        info = await client.info()
    print(json.dumps(dataclasses.asdict(info), indent=2))
    return 0


async def _moderate(args: argparse.Namespace) -> int:
    import grpc

    from star_client.moderate_cli import moderate

    try:
        return await moderate(args)
    except grpc.RpcError as exc:  # a status the server ended the session with: one line, exit 2
        return fail(f"star-client {args.command}", exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"score": _score, "info": _info, "moderate": _moderate}
    try:
        return asyncio.run(commands[args.command](args))
    except USER_ERRORS as exc:
        return fail(f"star-client {args.command}", exc)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
