"""Many live-moderation sessions and ScoreStream traffic against one real scorer process.

    python benchmarks/moderate_load.py [--quick] [--sessions 32] [--tokens 300] [--delta-tokens 8]

A `star-scorer serve` subprocess with a session cache budget of three quarters of what the sessions
need at their end (--cache-fraction), so caches are evicted and recomputed. Three phases, all in this run:
  alone       the sessions one after another, each as fast as the server answers (the baseline);
  together    all sessions at once, as fast as the server answers: cuts per second against `alone`
              is what batching sessions' tails into shared forwards buys;
  paced       one session at a generation pace (a delta every --pace-ms): the latency baseline;
  loaded      all sessions at once at that pace, while ScoreStream requests at bulk priority run
              beside them: the per-cut latency a user sees (p50, p99: from the delta that completes
              a cut to its score on the client), against `paced`.
Every session's scores are checked against per-cut scoring of its final response (`max_abs_diff`),
and every Score request must come back whole (`lost`). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from scorer_server.engine.engine import StarEngine
from star_client import AsyncScorerClient
from star_contract.types import Conversation, CutKind, CutSpec, ModerateOptions, ScoreRequest, Segment
from star_testing.scorer_process import ScorerProcess, free_port
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

PROMPT = "How do I bake bread?"
WORDS = ["the", "a", "to", "of", "and", "mix", "heat", "step", "first", "then", "slowly", "until"]
WORDS += ["water", "flour", "yeast", "bread", "oven", "sure", "220", "C.", "done,"]
EVERY = 5


def chunks(engine: StarEngine, text: str, size: int) -> list[str]:
    enc = engine.guard.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [enc["offset_mapping"][i][0] for i in range(0, len(enc["input_ids"]), size)] + [len(text)]
    return [text[a:b] for a, b in itertools.pairwise(starts) if b > a]


def completing_offset(text: str, cut: int) -> int:
    """How much of `text` must have arrived before the cut at `cut` is ready: the next word's first
    character (the final cut: all of it)."""
    rest = re.search(r"\S", text[cut:])
    return len(text) if rest is None or cut == len(text) else cut + rest.start() + 1


async def one_session(
    client: AsyncScorerClient, text: str, deltas: list[str], pace_s: float, latencies: list[float]
) -> list[Segment]:
    sent: list[tuple[int, float]] = []  # (characters sent so far, when)
    arrived: dict[int, float] = {}
    conv = Conversation.from_pair(PROMPT, "")
    async with client.moderate(conv, ModerateOptions(every=EVERY, unsafe_below=0.0)) as session:

        async def watch() -> None:
            async for event in session:
                if isinstance(event, Segment):
                    arrived[event.end] = time.monotonic()

        watcher = asyncio.ensure_future(watch())
        n = 0
        for d in deltas:
            n += len(d)
            sent.append((n, time.monotonic()))
            await session.push(d)
            await asyncio.sleep(pace_s)
        sent.append((len(text) + 1, time.monotonic()))
        await session.close()
        await watcher
    for s in session.segments:
        need = completing_offset(text, s.end)
        t_sent = next(t for chars, t in sent if chars >= need)
        latencies.append(arrived[s.end] - t_sent)
    return session.segments


async def phase(
    address: str, texts: list[str], deltas: list[list[str]], together: bool, pace_s: float, bulk: list[Any]
) -> tuple[list[list[Segment]], list[float], float, int]:
    latencies: list[float] = []
    async with AsyncScorerClient(address) as client:
        t0 = time.monotonic()
        bulk_task = asyncio.ensure_future(client.score_many(bulk)) if bulk else None
        if together:
            got = await asyncio.gather(
                *[one_session(client, t, d, pace_s, latencies) for t, d in zip(texts, deltas, strict=True)]
            )
        else:
            got = [
                await one_session(client, t, d, pace_s, latencies) for t, d in zip(texts, deltas, strict=True)
            ]
        seconds = time.monotonic() - t0
        scored = await bulk_task if bulk_task is not None else []
    return list(got), latencies, seconds, sum(len(r.segments) for r in scored)


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter responses (< 45 s on 2 cores)")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=None, help="guard tokens per response (300; quick 100)")
    ap.add_argument("--delta-tokens", type=int, default=8)
    ap.add_argument("--pace-ms", type=float, default=300.0, help="between a session's deltas when loaded")
    ap.add_argument(
        "--cache-fraction", type=float, default=0.75, help="session cache budget over what all sessions need"
    )
    ap.add_argument("--no-bulk", action="store_true", help="no ScoreStream traffic beside the sessions")
    args = ap.parse_args(argv)
    tokens = args.tokens or (100 if args.quick else 300)
    pace_s = args.pace_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyGuardSpec(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=344, vocab=1000)
        guard_dir = save_tiny_guard(Path(tmp) / "guard", spec)
        engine = StarEngine.from_dir(guard_dir)
        rng = random.Random(0)
        texts = []
        for _ in range(args.sessions):
            words: list[str] = []
            while len(engine.guard.encode([" ".join(words)])[0]) < tokens:
                words.extend(rng.choice(WORDS) for _ in range(10))
            texts.append(" ".join(words))
        deltas = [chunks(engine, t, args.delta_tokens) for t in texts]
        prompt_tokens = len(
            engine.guard.encode([engine.guard.template.render(Conversation.from_pair(PROMPT, texts[0]))])[0]
        )
        suffix = engine.guard.template.split(Conversation.from_pair(PROMPT, texts[0])).suffix
        # what each session computes of its trunk when nothing is evicted: the template head comes from
        # the server's shared-head cache
        head = engine.head.tokens if engine.head is not None else 0
        trunk_len = prompt_tokens - len(engine.guard.encode([suffix])[0]) - head
        session_runs = 3 * args.sessions + 1  # alone, together, loaded, and one paced session
        per_token = 2 * spec.layers * spec.kv_heads * (spec.hidden // spec.heads) * 4  # float32 keys + values
        budget_mib = args.cache_fraction * args.sessions * prompt_tokens * per_token / 2**20
        bulk = (
            []
            if args.no_bulk
            else [
                ScoreRequest(Conversation.from_pair(PROMPT, t), CutSpec(CutKind.WORDS, EVERY)) for t in texts
            ]
        )
        server = ScorerProcess(
            ["--guard", str(guard_dir), "--session-cache-mib", f"{budget_mib:.4f}", "--max-wait-ms", "2"],
            Path(tmp) / "server.log",
            metrics_port=free_port(),
            env={"STAR_THREADS": "2"},
        ).start()
        try:
            alone, _, t_alone, _ = asyncio.run(phase(server.address, texts, deltas, False, 0.0, []))
            together, _, t_together, _ = asyncio.run(phase(server.address, texts, deltas, True, 0.0, []))
            _, lat_alone, _, _ = asyncio.run(phase(server.address, texts[:1], deltas[:1], False, pace_s, []))
            loaded, lat, t_loaded, bulk_cuts = asyncio.run(
                phase(server.address, texts, deltas, True, pace_s, bulk)
            )
            evictions = metric(server.metrics_port, "star_session_cache_evictions_total")
            trunk_tokens = metric(server.metrics_port, "star_session_trunk_tokens_total")
        finally:
            server.stop()
        want = engine.score(
            [ScoreRequest(Conversation.from_pair(PROMPT, t), CutSpec(CutKind.WORDS, EVERY)) for t in texts]
        )
    diffs: list[float] = []
    lost = 0
    for run in (alone, together, loaded):
        for segs, ref in zip(run, want, strict=True):
            if [s.end for s in segs] != [s.end for s in ref.segments]:
                print(
                    "cut ends differ:", [s.end for s in segs], [s.end for s in ref.segments], file=sys.stderr
                )
                lost += 1
                continue
            diffs.extend(abs(a.p_safe - b.p_safe) for a, b in zip(segs, ref.segments, strict=True))
    cuts = sum(len(r.segments) for r in want)
    lost += int(bulk_cuts != cuts)
    lat.sort()
    result = {
        "bench": "moderate_load",
        "together_vs_alone_cuts_per_s": round(t_alone / t_together, 2),
        "together_cuts_per_s": round(cuts / t_together, 1),
        "loaded_cuts_per_s_offered": round(cuts / (len(deltas[0]) * pace_s), 1),
        "p50_cut_ms_loaded": round(1000 * statistics.median(lat), 1),
        "p99_cut_ms_loaded": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
        "p50_cut_ms_one_session": round(1000 * statistics.median(lat_alone), 1),
        "p99_loaded_vs_one_session_p50": round(
            lat[min(len(lat) - 1, int(0.99 * len(lat)))] / statistics.median(lat_alone), 2
        ),
        "max_abs_diff": max(diffs),
        "lost": lost,
        "evictions": int(evictions),
        # trunk tokens computed over what the sessions' trunks hold at their end past the shared head:
        # 1.0 when no cache was ever dropped, more for each recomputation after an eviction
        "trunk_recompute_ratio": round(trunk_tokens / (session_runs * trunk_len), 3),
        "sessions": args.sessions,
        "cuts_per_session": round(cuts / args.sessions, 1),
        "score_cuts_beside": bulk_cuts,
        "loaded_s": round(t_loaded, 2),
        "cache_budget_mib": round(budget_mib, 3),
        "shape": "quick" if args.quick else "full",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
