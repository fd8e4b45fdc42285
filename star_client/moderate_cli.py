"""`star-client moderate`: guard text arriving on stdin, as it arrives, against a running scorer.

    some-generator | star-client moderate --target 127.0.0.1:50051 --prompt "How do I ...?"

The text passes through to stdout as it is read (unless --quiet) and stops at the guard's stop; each
cut's score and the stop are JSON lines on stderr. Exit 0 when the response ended safe, 3 when the
guard stopped it, 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from star_contract.types import Convention, Conversation, CutKind, ModerateOptions, ModerationStop, Segment

STOPPED = 3


def add_moderate_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--target", required=True, help="scorer address, HOST:PORT")
    who = ap.add_mutually_exclusive_group(required=True)
    who.add_argument("--prompt", help="the user message the response answers")
    who.add_argument(
        "--conversation",
        type=Path,
        help="JSON file: a list of {role, content} messages so far (the response being generated last)",
    )
    ap.add_argument(
        "--every", type=int, default=5, help="a cut after every M words, or N guard tokens (default 5)"
    )
    ap.add_argument(
        "--cut",
        choices=["words", "guard-tokens"],
        default="words",
        help="what --every counts: whitespace-separated words (default) or the guard's own tokens",
    )
    ap.add_argument("--unsafe-below", type=float, default=0.5, help="P(safe) below which a cut is unsafe")
    ap.add_argument("--consecutive", type=int, default=1, help="unsafe cuts in a row that stop the text")
    ap.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the verdict")
    ap.add_argument(
        "--convention",
        choices=["raw", "published"],
        default="raw",
        help="how P(safe) is read: the paper's formula (raw, default) or the authors' released code's",
    )
    ap.add_argument("--quiet", action="store_true", help="do not pass the text through to stdout")


def _conversation(args: argparse.Namespace) -> Conversation:
    if args.prompt is not None:
        return Conversation.from_pair(args.prompt, "")
    messages = json.loads(args.conversation.read_text())
    if not messages or messages[-1].get("role") != "assistant":
        messages = [*messages, {"role": "assistant", "content": ""}]
    return Conversation.from_dicts(messages)


async def _stdin_chunks() -> AsyncIterator[str]:
    """Whatever stdin holds whenever it holds something (not line by line), decoded as UTF-8."""
    loop = asyncio.get_running_loop()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = sys.stdin.fileno()
    while data := await loop.run_in_executor(None, os.read, fd, 4096):
        if text := decoder.decode(data):
            yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


def _event_line(event: Segment | ModerationStop) -> str:
    if isinstance(event, Segment):
        return json.dumps({"cut": event.end, "p_safe": round(event.p_safe, 6)})
    return json.dumps({"stop": {"offset": event.offset, "cut": event.cut, "p_safe": round(event.p_safe, 6)}})


async def moderate(args: argparse.Namespace) -> int:
    from star_client import AsyncScorerClient

    kind = CutKind.GUARD_TOKENS if args.cut == "guard-tokens" else CutKind.WORDS
    options = ModerateOptions(
        args.every, args.unsafe_below, args.consecutive, args.temperature, kind, Convention(args.convention)
    )
    async with (
        AsyncScorerClient(args.target) as client,
        client.moderate(_conversation(args), options) as session,
    ):

        async def report() -> None:
            async for event in session:
                print(_event_line(event), file=sys.stderr, flush=True)

        reporter = asyncio.ensure_future(report())
        async for text in session.guard(_stdin_chunks()):
            if not args.quiet:
                sys.stdout.write(text)
                sys.stdout.flush()
        if session.stop is None:
            await session.close()
        await reporter
    return STOPPED if session.stop is not None else 0
