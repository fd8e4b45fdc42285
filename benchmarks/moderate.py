"""Incremental STAR while a response streams in, against re-scoring the whole prefix at every cut.

    python benchmarks/moderate.py [--quick] [--tokens 1000] [--delta-tokens 8] [--every 5]
    python benchmarks/moderate.py --shape llama-guard-3-1b --device cuda --dtype bfloat16   # on a GPU

A response of about `--tokens` guard tokens arrives in deltas of `--delta-tokens` tokens; a cut every
`--every` words. Ours: one IncrementalSession (the trunk's keys and values kept between deltas). The
baseline is what existing streaming helpers do: one plain forward of the whole per-cut prompt at every
cut. Both run on the same guard and threads in this run. The baseline is timed on an evenly spaced
sample of cuts and scaled to all cuts (its cost per cut grows linearly along the response, and so does
the sample); the token and FLOP counts are exact. The JSON on the last line has:
  incremental_vs_rescore          total guard compute, in FLOPs (the linear layers for every token
                                  computed, attention for every query-key pair; this guard's sizes)
  incremental_vs_rescore_at_*     the same token and pair counts priced at Llama Guard 3 1B / 8B sizes
  incremental_vs_rescore_tokens   guard tokens computed
  incremental_vs_rescore_time     wall clock on this machine
  per_cut_ms_growth               ours: the median cut of the last tenth over that of the first (a
                                  median: one stall on a shared machine moves a mean)
  max_abs_diff                    ours against the per-cut definition, on the sampled cuts
  tokenize_ms_per_cut             ours: rendering and tokenising the prompts
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from star_engine import SHAPES  # benchmarks/star_engine.py: the guard shapes, real ones included

from scorer_server.engine.engine import StarEngine
from scorer_server.engine.incremental import IncrementalSession
from scorer_server.engine.plain import forward_prompts
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from scorer_server.guards.verdict import p_safe
from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest
from star_testing.sessions import run
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

WORDS = ["the", "a", "to", "of", "and", "mix", "heat", "step", "first", "then", "slowly", "next", "until"]
WORDS += ["water", "flour", "yeast", "bread", "oven", "sure"]


def _response(tokenizer: Any, tokens: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
        words.extend(rng.choice(WORDS) for _ in range(20))
    return " ".join(words)


def _deltas(tokenizer: Any, text: str, size: int) -> list[str]:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = [offsets[i][0] for i in range(0, len(offsets), size)] + [len(text)]
    return [text[a:b] for a, b in itertools.pairwise(starts) if b > a]


def flops(config: Any, tokens: int, pairs: int) -> float:
    """Forward FLOPs of a Llama-shaped guard: 2 per weight of every linear layer for each token, and
    2 x 2 x heads x head_dim per layer for each query-key pair (scores and the weighted sum)."""
    d, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    linear = d * heads * head_dim * 2 + d * kv * head_dim * 2 + 3 * d * config.intermediate_size
    layers = config.num_hidden_layers
    return 2.0 * linear * layers * tokens + 4.0 * heads * head_dim * layers * pairs


REAL_SHAPES = {
    "llama_guard_3_1b": SimpleNamespace(
        hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
        intermediate_size=8192, num_hidden_layers=16,
    ),
    "llama_guard_3_8b": SimpleNamespace(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=14336, num_hidden_layers=32,
    ),
}  # fmt: skip
"""Published config shapes: the same token and pair counts priced at a real guard's layer sizes."""


QUICK_SHAPE: dict[str, Any] = dict(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=688, vocab=2000)


def causal_pairs(start: int, n: int) -> int:
    """Query-key pairs of `n` new tokens after `start` cached ones, causal."""
    return n * start + n * (n + 1) // 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller guard and sample (< 45 s on 2 cores)")
    ap.add_argument("--tokens", type=int, default=1000, help="response length in guard tokens")
    ap.add_argument("--delta-tokens", type=int, default=8, help="guard tokens per arriving delta")
    ap.add_argument("--every", type=int, default=5, help="a cut every M words")
    ap.add_argument("--sample", type=int, default=None, help="baseline cuts timed (default 24, quick 12)")
    ap.add_argument(
        "--shape",
        default=None,
        choices=sorted(SHAPES),
        help="guard architecture (random weights; default cpu, quick: a 4 x 256 guard)",
    )
    ap.add_argument("--device", default="cpu", help="e.g. cuda (benchmarks/gpu_check.sh)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    shape = QUICK_SHAPE if args.quick and args.shape is None else SHAPES[args.shape or "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        spec = TinyGuardSpec(family="llama", init_range=0.02, **shape)
        path = str(save_tiny_guard(Path(tmp) / "guard", spec))
        guard = load_guard(GuardConfig(path=path, dtype=args.dtype, device=args.device))
    engine = StarEngine(guard)
    text = _response(guard.tokenizer, args.tokens, seed=1)
    conv = Conversation.from_pair("How do I bake bread?", text)
    deltas = _deltas(guard.tokenizer, text, args.delta_tokens)

    warm = IncrementalSession(guard, conv.with_response(""), CutSpec(CutKind.WORDS, args.every))
    for delta in deltas[:20]:
        run(engine, warm, warm.plan_push(delta))
    session = IncrementalSession(guard, conv.with_response(""), CutSpec(CutKind.WORDS, args.every))
    latencies: list[float] = []
    ours: dict[int, float] = {}
    our_tokens = our_pairs = 0
    t_plan = 0.0
    t0 = time.perf_counter()
    steps: list[str | None] = [*deltas, None]
    for d in steps:
        t = time.perf_counter()
        inputs = session.plan_push(d) if d is not None else session.plan_close()
        t_plan += time.perf_counter() - t
        segs = []
        for inp in inputs:  # one forward each, to count each cut's tokens
            before = session.state.trunk_tokens + session.state.tail_tokens
            segs += run(engine, session, [inp])
            n = session.state.trunk_tokens + session.state.tail_tokens - before  # the last n computed
            our_tokens += n
            our_pairs += causal_pairs(len(inp.ids) - n, n)
        if segs:
            latencies.extend([(time.perf_counter() - t) / len(segs)] * len(segs))
            ours.update({s.end: s.p_safe for s in segs})
    t_ours = time.perf_counter() - t0

    plan = engine.plan(ScoreRequest(conv, CutSpec(CutKind.WORDS, args.every)))
    n_cuts = len(plan.cuts)
    sample_n = min(n_cuts, args.sample or (12 if args.quick else 24))
    sample = sorted({round(i * (n_cuts - 1) / max(sample_n - 1, 1)) for i in range(sample_n)})
    forward_prompts(guard, [plan.prompt(sample[0])], engine.pad_id)  # warm-up
    t_sample, diffs = 0.0, []
    for i in sample:
        t = time.perf_counter()
        logits = forward_prompts(guard, [plan.prompt(i)], engine.pad_id)
        ref = p_safe(float(logits[0, guard.safe_id] - logits[0, guard.unsafe_id]))  # waits for the GPU
        t_sample += time.perf_counter() - t
        diffs.append(abs(ours[plan.cuts[i]] - ref))
    t_rescore = t_sample / len(sample) * n_cuts
    tenth = max(1, len(latencies) // 10)
    computed = session.state.trunk_tokens + session.state.tail_tokens
    assert computed == our_tokens, (computed, our_tokens)
    cfg = guard.model.config
    rescore_pairs = sum(causal_pairs(0, n) for n in plan.per_cut_tokens)
    rescore_flops = flops(cfg, sum(plan.per_cut_tokens), rescore_pairs)
    result = {
        "bench": "moderate",
        "incremental_vs_rescore": round(rescore_flops / flops(cfg, our_tokens, our_pairs), 2),
        "incremental_vs_rescore_time": round(t_rescore / t_ours, 2),
        **{
            f"incremental_vs_rescore_at_{name}": round(
                flops(shape, sum(plan.per_cut_tokens), rescore_pairs) / flops(shape, our_tokens, our_pairs), 2
            )
            for name, shape in REAL_SHAPES.items()
        },
        "incremental_vs_rescore_tokens": round(sum(plan.per_cut_tokens) / computed, 2),
        "per_cut_ms_growth": round(
            statistics.median(latencies[-tenth:]) / statistics.median(latencies[:tenth]), 3
        ),
        "max_abs_diff": max(diffs),
        "per_cut_ms_first": round(1000 * statistics.median(latencies[:tenth]), 2),
        "per_cut_ms_last": round(1000 * statistics.median(latencies[-tenth:]), 2),
        "tokenize_ms_per_cut": round(1000 * t_plan / n_cuts, 3),
        "prompt_tokenizations_partial": session.prompt_tokens.partial,
        "prompt_tokenizations_whole": session.prompt_tokens.whole,
        "cuts": n_cuts,
        "deltas": len(deltas),
        "response_tokens": len(guard.encode([text])[0]),
        "rollbacks": session.state.rollbacks,
        "baseline_cuts_timed": len(sample),
        "shape": args.shape or ("quick" if args.quick else "cpu"),
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
