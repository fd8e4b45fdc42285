"""Served vs in-process STAR scoring: N concurrent gRPC clients against a `star-scorer serve` subprocess,
versus the same work through the engine in this process, measured in one run.

    python benchmarks/serve.py [--quick] [--clients 16] [--requests-per-client 4] [--rounds 3]

The in-process baseline is the engine's best case: every request handed to `StarEngine.score` at once
(planning, then forwards packed from rows sorted by length). The served run pays for gRPC, protobuf,
the client library and the dynamic batcher, which only ever sees what has arrived so far. Both sides
use the same guard (hidden 256 x 4 layers with --quick, 512 x 6 otherwise, so the forward dominates as
it does with a real guard), the same token budget per forward, the same torch thread count and the same
OpenMP wait policy (the server's default, passive). Responses are 20-80 words, cut every 5 words.

The two are measured in interleaved rounds (in-process then served, then the other way round, ...) so
that load from other programs on a shared machine hits both alike. `served_vs_inprocess` is the best
in-process time over the best served time (1.0: serving costs nothing): each side's least disturbed
round, the same estimator for both; the per-round ratios and their median are reported too.
Server start-up, model loading and warm-up are outside the timed region.

Last line: {"bench": "serve", "served_vs_inprocess": X, "p50_ms": A, "p99_ms": B, "requests": N,
            "lost": 0, ...}; requests, lost and the latency percentiles cover every served round.
Latency is per request from the moment its client sends it, in a burst of every client's requests.
Diagnostics alongside: forwards and padded tokens per forward on each side (the server's from its
Prometheus endpoint), the share of served wall time the server spent in forwards, and CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from star_client import AsyncScorerClient, ClientConfig
from star_contract.types import Conversation, CutSpec, ScoreRequest

ROOT = Path(__file__).resolve().parent.parent
_VOCAB = (
    "the a to of and in is it you that for on with as this take mix heat step first then carefully "
    "slowly next until after water flour yeast bread oven minutes sure here how do can will make use"
)


def make_requests(n: int, words: tuple[int, int], seed: int = 0) -> list[ScoreRequest]:
    """`n` bread-baking answers of `words[0]..words[1]` words, cut every 5 words (the default)."""
    rng = random.Random(seed)
    vocab = _VOCAB.split()
    out = []
    for i in range(n):
        response = " ".join(rng.choice(vocab) for _ in range(rng.randint(*words)))
        out.append(
            ScoreRequest(Conversation.from_pair(f"question {i}: how do I bake bread?", response), CutSpec())
        )
    return out


def load_engine(guard_dir: Path, max_batch_tokens: int, threads: int) -> Any:
    import torch

    from scorer_server.budget import TokenBudget
    from scorer_server.engine.engine import EngineConfig, StarEngine
    from scorer_server.guards.guard_config import GuardConfig
    from scorer_server.guards.loader import load_guard

    torch.set_num_threads(threads)
    budget = TokenBudget(max_batch_tokens=max_batch_tokens)
    return StarEngine(load_guard(GuardConfig(str(guard_dir))), EngineConfig(budget=budget))


def scrape(metrics_port: int) -> dict[str, float]:
    """The scorer's forward counters from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in _COUNTERS:
            out[_COUNTERS[name]] = float(value)
    return out


_COUNTERS = {
    "star_guard_forwards_total": "forwards",
    "star_forward_seconds_sum": "forward_s",
    "star_batch_tokens_sum": "padded_tokens",
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def packing(engine: Any, requests: list[ScoreRequest]) -> tuple[int, int]:
    """(forwards, padded tokens) of the in-process run's packing of `requests`."""
    from scorer_server.engine.engine import pack_rows

    items = [it for r in requests for it in engine.work_items(engine.plan(r))]
    batches = list(pack_rows(items, engine.config.max_batch_tokens))
    return len(batches), sum(len(b) * max(it.tokens for it in b) for b in batches)


def in_process(engine: Any, requests: list[ScoreRequest]) -> float:
    """Seconds for the engine to score every request in this process."""
    t0 = time.perf_counter()
    engine.score(requests)
    return time.perf_counter() - t0


async def served(
    clients: list[AsyncScorerClient], per_client: list[list[ScoreRequest]], latencies: list[float]
) -> tuple[float, int]:
    """(seconds, requests answered) for every client sending its requests at once."""

    async def one(client: AsyncScorerClient, req: ScoreRequest) -> int:
        t = time.perf_counter()
        s = await client.score(req)
        latencies.append(time.perf_counter() - t)
        return 1 if s.segments else 0

    t0 = time.perf_counter()
    answered = await asyncio.gather(
        *(one(c, r) for c, reqs in zip(clients, per_client, strict=True) for r in reqs),
        return_exceptions=True,
    )
    seconds = time.perf_counter() - t0
    return seconds, sum(a for a in answered if isinstance(a, int))


async def measure(
    engine: Any,
    address: str,
    per_client: list[list[ScoreRequest]],
    rounds: int,
    window: int,
    server_pid: int,
    metrics_port: int,
) -> dict[str, Any]:
    """Interleaved rounds of in-process and served scoring of the same requests."""
    reqs = [r for rs in per_client for r in rs]
    clients = [
        AsyncScorerClient(address, ClientConfig(max_in_flight=window, deadline_s=300)) for _ in per_client
    ]
    for c in clients:
        await c.info()
    # Warm-up, untimed and short: a forward on each side and every client's stream open.
    warm = ScoreRequest(Conversation.from_pair("How do I bake bread?", "Mix flour, water and yeast."))
    engine.score([warm] * 4)
    await asyncio.gather(*(c.score(warm) for c in clients))
    base: list[float] = []
    serve: list[float] = []
    latencies: list[float] = []
    lost = 0
    cpu = {"in": [0.0, 0.0], "served": [0.0, 0.0]}  # [this process, the server] per side
    fwd = dict.fromkeys(_COUNTERS.values(), 0.0)  # the server's forwards in the served rounds
    for k in range(rounds):
        for side in ("in", "served") if k % 2 == 0 else ("served", "in"):
            c0, s0 = time.process_time(), cpu_seconds(server_pid)
            if side == "in":
                seconds = in_process(engine, reqs)
                base.append(seconds)
            else:
                m0 = scrape(metrics_port)
                seconds, answered = await served(clients, per_client, latencies)
                serve.append(seconds)
                lost += len(reqs) - answered
                m1 = scrape(metrics_port)
                for key in fwd:
                    fwd[key] += m1.get(key, 0.0) - m0.get(key, 0.0)
            cpu[side][0] += time.process_time() - c0
            cpu[side][1] += cpu_seconds(server_pid) - s0
            print(f"round {k + 1}/{rounds} {side:>6}: {seconds:.2f} s", file=sys.stderr)
    for c in clients:
        await c.close()
    latencies.sort()
    forwards, padded = packing(engine, reqs)
    ratios = [b / s for b, s in zip(base, serve, strict=True)]
    n = len(reqs)
    return {
        "bench": "serve",
        "served_vs_inprocess": round(min(base) / min(serve), 3),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1)
        if latencies
        else None,
        "requests": n * rounds,
        "lost": lost,
        "rounds": rounds,
        "requests_per_round": n,
        "round_ratios": [round(r, 3) for r in ratios],
        "median_round_ratio": round(statistics.median(ratios), 3),
        "inprocess_rps": round(n * rounds / sum(base), 1),
        "served_rps": round(n * rounds / sum(serve), 1),
        "inprocess_cpu_s": round(cpu["in"][0] / rounds, 2),
        "inprocess_forwards": forwards,
        "inprocess_padded_tokens_per_forward": round(padded / forwards),
        "served_forwards": round(fwd["forwards"] / rounds, 1),
        "served_padded_tokens_per_forward": round(fwd["padded_tokens"] / max(1.0, fwd["forwards"])),
        "served_forward_busy": round(fwd["forward_s"] / sum(serve), 3),
        "served_cpu_s": {
            "client": round(cpu["served"][0] / rounds, 2),
            "server": round(cpu["served"][1] / rounds, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller guard and workload (under 45 s on 2 cores)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent gRPC clients, one channel each")
    ap.add_argument("--requests-per-client", type=int, default=0, help="per round; default 2 (--quick) or 4")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved in-process/served rounds")
    ap.add_argument("--window", type=int, default=8, help="requests each client keeps in flight")
    ap.add_argument("--max-batch-tokens", type=int, default=8192, help="forward budget, same for both sides")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="the server's batcher maximum wait")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads, same for both sides; 0: one per core"
    )
    args = ap.parse_args(argv)
    # Before torch loads OpenMP: the server's default (see `star-scorer serve --omp-wait-policy`); the
    # scorer subprocess inherits it, so both sides run their threads alike.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from star_testing.scorer_process import ScorerProcess, free_port
    from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard

    per = args.requests_per_client or (2 if args.quick else 4)
    threads = args.threads or os.cpu_count() or 1
    spec = (
        TinyGuardSpec(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=704)
        if args.quick
        else TinyGuardSpec(hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1408)
    )
    reqs = make_requests(args.clients * per, (20, 80))
    per_client = [reqs[c * per : (c + 1) * per] for c in range(args.clients)]
    with tempfile.TemporaryDirectory() as tmp:
        guard_dir = save_tiny_guard(Path(tmp) / "guard", spec)
        args_ = ["--guard", str(guard_dir), "--max-batch-tokens", str(args.max_batch_tokens)]
        args_ += ["--max-wait-ms", str(args.max_wait_ms), "--threads", str(threads), "--log-level", "warning"]
        server = ScorerProcess(args_, Path(tmp) / "server.log", metrics_port=free_port()).launch()
        try:
            engine = load_engine(guard_dir, args.max_batch_tokens, threads)  # while the server starts
            server.wait_serving(120.0)
            assert server.proc is not None
            result = asyncio.run(
                measure(
                    engine,
                    server.address,
                    per_client,
                    args.rounds,
                    args.window,
                    server.proc.pid,
                    server.metrics_port,
                )
            )
        finally:
            server.stop(30)
    result.update(
        clients=args.clients,
        threads=threads,
        omp_wait_policy=os.environ["OMP_WAIT_POLICY"],
        cpu_count=os.cpu_count(),
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
