"""STAR engine throughput: the one-pass engine vs the per-cut definition vs a plain causal forward.

    python benchmarks/star_engine.py [--quick] [--device cuda --dtype bfloat16 --shape llama-guard-3-1b]

All three are measured in the same run on the same guard and conversations; the JSON on the last line
reports ratios (speedup_vs_per_cut, vs_plain_forward) so the numbers survive a noisy shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from scorer_server.budget import TokenBudget
from scorer_server.engine.engine import EngineConfig, StarEngine, pack_rows
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.types import Conversation, CutSpec, ScoreRequest
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

SHAPES: dict[str, dict[str, Any]] = {
    # CPU-sized: big enough that the forward dominates, small enough for 2 cores.
    "cpu": dict(hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1408, vocab=4000),
    "llama-guard-3-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=128256),
    "llama-guard-3-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256),
}

_WORDS = " ".join(
    [
        "the a to of and in is it you that for on with as this be are or by at from take mix heat step",
        "first then carefully slowly next until after before water flour yeast bread oven minutes sure",
        "here how do can will would should could make use add stir wait check ready done safe plan",
    ]
).split()


def _policy(tokens_goal: int, tokenizer: Any) -> str:
    """Category text of roughly `tokens_goal` guard tokens (Llama Guard 3 puts ~300 before the chat)."""
    lines: list[str] = []
    i = 1
    while len(tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"]) < tokens_goal:
        lines.append(f"S{i}: " + " ".join(random.choice(_WORDS) for _ in range(12)) + ".")
        i += 1
    return "\n".join(lines)


def _conversations(n: int, words: int, seed: int) -> list[Conversation]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = " ".join(rng.choice(_WORDS) for _ in range(15)) + "?"
        response = " ".join(rng.choice(_WORDS) for _ in range(words)) + "."
        out.append(Conversation.from_pair(prompt, response))
    return out


def _timeit(fn: Any, repeats: int) -> tuple[float, Any]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, result


@torch.inference_mode()
def _plain_forward(engine: StarEngine, lengths: list[int], budget: int) -> None:
    """A causal forward over rows of the same lengths as one-pass processes, without a custom mask."""
    model, device = engine.guard.model, engine.guard.device
    order = sorted(lengths)
    batch: list[int] = []
    for n in [*order, -1]:
        if n < 0 or (batch and (len(batch) + 1) * max(*batch, n) > budget):
            length = max(batch)
            ids = torch.full((len(batch), length), 5, device=device)
            model.base_model(input_ids=ids, use_cache=False)
            batch = []
        if n >= 0:
            batch.append(n)


def _head_cache_run(
    engine: StarEngine, words: int, every: int, n_conv: int, n_slow: int, repeats: int
) -> dict[str, Any]:
    """Short responses scored with and without the shared-head cache (and against per-cut)."""
    reqs = [ScoreRequest(c, CutSpec(every=every)) for c in _conversations(n_conv, words, seed=2)]
    without = StarEngine(engine.guard, replace(engine.config, head_cache=False))
    without.score(reqs[:1])
    engine.score(reqs[:1])
    t_with = t_without = float("inf")
    for _ in range(repeats):  # interleaved, so a noisy neighbour hits both sides alike
        t, cached = _timeit(lambda: engine.score(reqs), 1)
        t_with = min(t_with, t)
        t_without = min(t_without, _timeit(lambda: without.score(reqs), 1)[0])
    slow = engine.score(reqs[:n_slow], method="per_cut")
    diff = max(
        abs(x.p_safe - y.p_safe)
        for a, b in zip(cached, slow, strict=False)
        for x, y in zip(a.segments, b.segments, strict=True)
    )
    plan = engine.plan(reqs[0])
    return {
        "head_cache_speedup": round(t_without / t_with, 3),
        "head_cache_max_abs_diff": diff,
        "head_cache_tokens": engine.head.tokens if engine.head else 0,
        "head_cache_bytes": engine.head.nbytes if engine.head else 0,
        "short_response_tokens": len(engine.guard.encode([reqs[0].conversation.response])[0]),
        "short_trunk_tokens": len(plan.trunk),
        "short_tail_tokens": sum(len(t) for t in plan.tails),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="fewer conversations and repeats (< 45 s on 2 cores)"
    )
    ap.add_argument("--shape", default="cpu", choices=sorted(SHAPES), help="guard architecture to build")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--conversations", type=int, default=None, help="batch of conversations (default 8, quick 4)"
    )
    ap.add_argument("--words", type=int, default=200, help="response length in words")
    ap.add_argument(
        "--short-words",
        type=int,
        default=45,
        help="response length of the head-cache comparison (45 words: about 100 guard tokens here, "
        "as in the published finetuning data)",
    )
    ap.add_argument("--every", type=int, default=5, help="M: a cut every M words")
    ap.add_argument("--policy-tokens", type=int, default=300, help="guard tokens of policy before the chat")
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--per-cut-conversations",
        type=int,
        default=None,
        help="conversations the slow per-cut baseline scores (default 2, quick 1); throughput is per cut",
    )
    args = ap.parse_args(argv)
    n_conv = args.conversations or (2 if args.quick else 8)
    n_slow = min(n_conv, args.per_cut_conversations or (1 if args.quick else 2))
    repeats = args.repeats or (2 if args.quick else 3)
    slow_repeats = 1 if args.quick else repeats  # the per-cut baseline is the long pole
    random.seed(0)
    torch.manual_seed(0)

    shape = SHAPES[args.shape]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny_guard(Path(tmp) / "guard", TinyGuardSpec(family="llama", init_range=0.02, **shape))
        probe = load_guard(GuardConfig(path=str(path), dtype=args.dtype, device=args.device))
        policy = _policy(args.policy_tokens, probe.tokenizer)
        del probe
        guard = load_guard(
            GuardConfig(
                path=str(path), dtype=args.dtype, device=args.device, template_kwargs={"categories": policy}
            )
        )
    budget = TokenBudget(max_batch_tokens=args.max_batch_tokens, max_row_tokens=8192)
    engine = StarEngine(guard, EngineConfig(budget=budget))
    convs = _conversations(n_conv, args.words, seed=1)
    reqs = [ScoreRequest(c, CutSpec(every=args.every)) for c in convs]

    plans = [engine.plan(r) for r in reqs]
    items = [it for p in plans for it in engine.work_items(p)]
    one_pass_tokens = sum(it.tokens for it in items)
    per_cut_tokens = sum(sum(p.per_cut_tokens) for p in plans)
    n_cuts = sum(len(p.cuts) for p in plans)
    head_tokens = len(guard.encode([guard.template.split(convs[0]).head])[0])
    suffix_tokens = len(plans[0].tails[0])

    warm = [ScoreRequest(Conversation.from_pair("hi", "a b c d e f g"), CutSpec(every=2))]
    engine.score(warm)
    engine.score(warm, method="per_cut")
    t_one, fast = _timeit(lambda: engine.score(reqs), repeats)
    t_per, slow = _timeit(lambda: engine.score(reqs[:n_slow], method="per_cut"), slow_repeats)
    slow_cuts = sum(len(p.cuts) for p in plans[:n_slow])
    rows = [it.tokens for batch in pack_rows(items, budget) for it in batch]
    t_plain, _ = _timeit(lambda: _plain_forward(engine, rows, args.max_batch_tokens), repeats)
    t_plan, _ = _timeit(lambda: [engine.plan(r) for r in reqs], repeats)
    head = _head_cache_run(engine, args.short_words, args.every, n_conv, n_slow, repeats + 1)
    diff = max(
        abs(x.p_safe - y.p_safe)
        for a, b in zip(fast, slow, strict=False)
        for x, y in zip(a.segments, b.segments, strict=True)
    )
    one_rate, per_rate = n_cuts / t_one, slow_cuts / t_per

    result: dict[str, Any] = {
        "bench": "star_engine",
        "speedup_vs_per_cut": round(one_rate / per_rate, 3),
        "vs_plain_forward": round(t_one / t_plain, 3),
        "max_abs_diff": diff,
        "kv_bytes_per_cut": round(engine.kv_bytes_per_cut),
        "cuts_per_s": round(one_rate, 2),
        "per_cut_cuts_per_s": round(per_rate, 2),
        "plan_share": round(t_plan / t_one, 3),
        "cuts": n_cuts,
        "one_pass_tokens": one_pass_tokens,
        "per_cut_tokens": per_cut_tokens,
        "per_cut_measured_cuts": slow_cuts,
        **head,
        "head_tokens": head_tokens,
        "suffix_tokens": suffix_tokens,
        "shape": args.shape,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
    }
    if args.device.startswith("cuda"):
        params = sum(p.numel() for p in guard.model.parameters())
        flops = 2 * params * one_pass_tokens  # linear layers; attention not counted
        peak = {"bfloat16": 989e12, "float16": 989e12}.get(args.dtype, 67e12)  # H100/H200 dense
        result["mfu"] = round(flops / t_one / peak, 4)
        result["tokens_per_s"] = round(one_pass_tokens / t_one, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
