"""Our one-pass STAR engine against a real vLLM doing the same work, in one run.

    python benchmarks/vs_vllm.py [--quick] [--threads 2]

The same tiny Llama-Guard-3-shaped guard (template with a ~400-token category list), the same
200-word responses cut every M = 5 words, scored three ways:

- ours: `StarEngine.score` in this process (one trunk per response, tails for the cuts);
- vllm_apc: what a user does today with vLLM: one completion request per cut, automatic prefix caching
  on (vLLM's default), reading the two verdict log-probs (our `--backend vllm` path, all cuts in flight);
- vLLM's `/generative_scoring` is not measured: it scores label tokens after query + item with a
  softmax over the labels only, so it cannot express a per-cut guard prompt with a template suffix.

Both sides get the same thread count (torch threads here, OMP_NUM_THREADS for vLLM's worker), and the
output says so. vLLM's start-up (about 30 s on 2 cores) is outside the timed region; the venv comes
from scripts/vllm_cpu_env.sh. The last line is one JSON object with `ours_vs_vllm_apc` (throughput
ratio, > 1 means ours is faster) and `max_abs_diff` (largest |p_safe| difference over every cut).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorer_server.backends.prompts import load_prompt_guard  # noqa: E402
from scorer_server.backends.remote import RemoteConfig  # noqa: E402
from scorer_server.backends.vllm import VllmBackend  # noqa: E402
from scorer_server.engine.engine import EngineConfig, StarEngine  # noqa: E402
from scorer_server.guards.guard_config import GuardConfig  # noqa: E402
from star_contract.types import Conversation, CutSpec, ScoreRequest, StarScores  # noqa: E402
from star_testing.scorer_process import free_port  # noqa: E402
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard  # noqa: E402
from star_testing.vllm_server import VLLM_PYTHON, VllmProcess  # noqa: E402

WORDS = [
    "the",
    "a",
    "to",
    "of",
    "and",
    "in",
    "is",
    "it",
    "you",
    "that",
    "for",
    "on",
    "with",
    "as",
    "this",
    "first",
    "then",
    "mix",
    "heat",
    "bread",
    "oven",
    "water",
]


def requests(n: int, words: int, seed: int = 0) -> list[ScoreRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        response = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
        out.append(ScoreRequest(Conversation.from_pair("How do I do this?", response), CutSpec()))
    return out


async def score_remote(backend: VllmBackend, reqs: list[ScoreRequest]) -> list[list[float]]:
    async def one(r: ScoreRequest) -> list[float]:
        segs = [s async for part in backend.score(r) for s in part.segments]
        return [s.p_safe for s in sorted(segs, key=lambda s: s.end)]

    return list(await asyncio.gather(*(one(r) for r in reqs)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 responses instead of 16")
    ap.add_argument("--threads", type=int, default=2, help="threads for each side (default 2)")
    ap.add_argument("--words", type=int, default=200, help="words per response (default 200)")
    args = ap.parse_args(argv)
    if not VLLM_PYTHON.exists():
        raise SystemExit("no vLLM venv: run scripts/vllm_cpu_env.sh first")
    torch.set_num_threads(args.threads)
    reqs = requests(4 if args.quick else 16, args.words)
    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyGuardSpec(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=688, vocab=2000)
        guard_dir = save_tiny_guard(Path(tmp) / "guard", spec)
        policy = "\n".join(
            f"S{i}: " + " ".join(random.Random(i).choice(WORDS) for _ in range(30)) for i in range(14)
        )
        kwargs = {"categories": policy}
        engine = StarEngine.from_dir(guard_dir, template_kwargs=kwargs)
        engine.score(reqs[:1])  # warm-up
        t0 = time.perf_counter()
        ours: list[StarScores] = engine.score(reqs)
        ours_s = time.perf_counter() - t0
        cuts = sum(len(s.segments) for s in ours)
        no_head = StarEngine(engine.guard, EngineConfig(head_cache=False))  # before the shared-head cache
        no_head.score(reqs[:1])
        t0 = time.perf_counter()
        no_head.score(reqs)
        no_head_s = time.perf_counter() - t0
        port = free_port()
        vllm = VllmProcess(guard_dir, port, Path(tmp) / "vllm.log", threads=args.threads, kv_cache_gib=2)
        try:
            vllm.start()
            guard = load_prompt_guard(GuardConfig(path=str(guard_dir), template_kwargs=kwargs), "vllm")
            backend = VllmBackend(guard, RemoteConfig(urls=(f"http://127.0.0.1:{port}",), max_concurrency=64))

            async def run() -> tuple[float, list[list[float]]]:
                await backend.start()
                await score_remote(backend, reqs[:1])  # warm-up (and the shared head cached)
                t = time.perf_counter()
                got = await score_remote(backend, reqs)
                dt = time.perf_counter() - t
                await backend.stop(1.0)
                return dt, got

            vllm_s, theirs = asyncio.run(run())
        finally:
            vllm.stop()
    diff = max(
        abs(a.p_safe - b)
        for s, t in zip(ours, theirs, strict=True)
        for a, b in zip(s.segments, t, strict=True)
    )
    result = {
        "ours_vs_vllm_apc": round(vllm_s / ours_s, 3),
        "max_abs_diff": diff,
        "ours_without_head_cache_vs_vllm_apc": round(vllm_s / no_head_s, 3),
        "cuts": cuts,
        "responses": len(reqs),
        "ours_cuts_per_s": round(cuts / ours_s, 1),
        "vllm_apc_cuts_per_s": round(cuts / vllm_s, 1),
        "threads_each": args.threads,
        "note": "same guard, prompts and cuts; vLLM start-up excluded; /generative_scoring not applicable",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
