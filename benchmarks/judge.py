"""Judge throughput: whole-response verdicts with the guard's verdict text (what a Judge call returns by
default) against p_unsafe alone (`JudgeRequest.p_unsafe_only`, what evaluations and landscapes read).

    python benchmarks/judge.py [--quick] [--conversations N] [--threads T]

Both are measured in the same run, on the shipped toy guard (a trained Llama-shaped guard that writes a
real verdict: "safe", or "unsafe" and a category) and its held-out judged response prefixes, in this
process through the scorer's engine. The JSON on the last line reports the ratio of their times.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from scorer_server.engine.engine import StarEngine
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.types import Conversation
from star_toy.build import shipped_models
from star_toy.guard import GuardBuildConfig, guard_data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer conversations and repeats (< 45 s on 2 cores)"
    )
    ap.add_argument(
        "--conversations", type=int, default=None, help="conversations judged (default 512, quick 128)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (default 3, quick 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    n = args.conversations or (128 if args.quick else 512)
    repeats = args.repeats or (2 if args.quick else 3)
    torch.set_num_threads(args.threads)

    _, held = guard_data(GuardBuildConfig())  # the toy guard's held-out judged response prefixes
    convs = [Conversation.from_pair(p.prompt, p.prefix) for p in held[:n]]
    guard = load_guard(GuardConfig(path=str(shipped_models() / "guard"), preset="llama-guard-3"))
    engine = StarEngine(guard)
    engine.judge(convs[:8])  # warm-up

    def best(decode: bool) -> tuple[float, list[float]]:
        times, p = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            verdicts = engine.judge(convs, decode=decode)
            times.append(time.perf_counter() - t0)
            p = [v.p_unsafe for v in verdicts]
        return min(times), p

    full_s, p_full = best(True)
    bare_s, p_bare = best(False)
    diff = max(abs(a - b) for a, b in zip(p_full, p_bare, strict=True))
    result = {
        "benchmark": "judge",
        "conversations": len(convs),
        "unsafe": sum(p >= 0.5 for p in p_full),
        "ms_per_conversation_with_text": round(1000 * full_s / len(convs), 3),
        "ms_per_conversation_p_unsafe_only": round(1000 * bare_s / len(convs), 3),
        "p_unsafe_only_vs_with_text": round(bare_s / full_s, 3),
        "max_p_unsafe_difference": diff,
        "threads": args.threads,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
