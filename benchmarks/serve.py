"""Served vs in-process STAR scoring: N concurrent gRPC clients against a scorer subprocess, versus the
same work through the engine in this process, measured back to back in one run.

    python benchmarks/serve.py [--quick] [--clients 16] [--requests-per-client 24]

The in-process baseline is the engine's best case: every request handed to `StarEngine.score` at once
(planning then packed forwards). The served run pays for gRPC, protobuf and the batcher and wins back
with planning overlapped with forwards. Last line: {"bench": "serve", "served_vs_inprocess": X, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scorer_server.testing.tiny_guard import TinyGuardSpec, save_tiny_guard
from scorer_server.types import Conversation, CutSpec, ScoreRequest
from trainer_client.client import AsyncScorerClient, ClientConfig

ROOT = Path(__file__).resolve().parent.parent
_WORDS = [
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
    "take",
    "mix",
    "heat",
    "step",
    "first",
    "then",
    "carefully",
    "slowly",
    "next",
    "until",
    "after",
    "water",
    "flour",
    "yeast",
    "bread",
    "oven",
    "minutes",
    "sure",
    "here",
    "how",
    "do",
    "can",
    "will",
    "make",
    "use",
]


def make_requests(n: int, seed: int = 0) -> list[ScoreRequest]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(10, 30)))
        out.append(
            ScoreRequest(Conversation.from_pair(f"question {i}: how do I bake bread?", words), CutSpec())
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_process(guard_dir: Path, requests: list[ScoreRequest], max_batch_tokens: int) -> float:
    """Seconds for the engine to score every request in this process (after a warm-up)."""
    from scorer_server.engine.engine import EngineConfig, StarEngine
    from scorer_server.guards.loader import GuardConfig, load_guard

    engine = StarEngine(
        load_guard(GuardConfig(str(guard_dir))), EngineConfig(max_batch_tokens=max_batch_tokens)
    )
    engine.score(requests[:4])
    t0 = time.perf_counter()
    engine.score(requests)
    seconds = time.perf_counter() - t0
    del engine
    gc.collect()
    return seconds


def start_server(guard_dir: Path, port: int, max_batch_tokens: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "scorer_server.cli",
        "serve",
        "--guard",
        str(guard_dir),
        "--port",
        str(port),
        "--metrics-port",
        "0",
        "--max-batch-tokens",
        str(max_batch_tokens),
        "--max-wait-ms",
        "5",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-2000:]}")
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                status = (
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                )
            if status == health_pb2.HealthCheckResponse.SERVING:
                return proc
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become SERVING")


async def served(
    address: str, per_client: list[list[ScoreRequest]], window: int
) -> tuple[float, list[float], int]:
    """(seconds, per-request latencies, answered) for all clients running at once."""
    latencies: list[float] = []
    config = ClientConfig(max_in_flight=window, deadline_s=300)
    clients = [AsyncScorerClient(address, config) for _ in per_client]
    for c in clients:
        await c.info()
    await asyncio.gather(*(c.score_many(reqs[:2]) for c, reqs in zip(clients, per_client, strict=True)))

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
    for c in clients:
        await c.close()
    return seconds, latencies, sum(a for a in answered if isinstance(a, int))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small guard and workload (under 45 s on 2 cores)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent gRPC clients")
    ap.add_argument("--requests-per-client", type=int, default=0, help="default 6 (--quick) or 24")
    ap.add_argument("--window", type=int, default=8, help="requests each client keeps in flight")
    ap.add_argument("--max-batch-tokens", type=int, default=8192, help="forward budget, same for both runs")
    args = ap.parse_args(argv)
    per = args.requests_per_client or (6 if args.quick else 24)
    spec = (
        TinyGuardSpec(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=512)
        if args.quick
        else TinyGuardSpec(hidden=512, layers=6, heads=8, kv_heads=4, intermediate=1408)
    )
    reqs = make_requests(args.clients * per)
    with tempfile.TemporaryDirectory() as tmp:
        guard_dir = save_tiny_guard(Path(tmp) / "guard", spec)
        port = free_port()
        proc = start_server(guard_dir, port, args.max_batch_tokens, Path(tmp) / "server.log")
        try:
            base_s = in_process(guard_dir, reqs, args.max_batch_tokens)
            per_client = [reqs[c * per : (c + 1) * per] for c in range(args.clients)]
            serve_s, lat, answered = asyncio.run(served(f"127.0.0.1:{port}", per_client, args.window))
        finally:
            proc.terminate()
            proc.wait(30)
    lat.sort()
    result = {
        "bench": "serve",
        "served_vs_inprocess": round(base_s / serve_s, 3),
        "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
        "requests": len(reqs),
        "lost": len(reqs) - answered,
        "clients": args.clients,
        "inprocess_rps": round(len(reqs) / base_s, 1),
        "served_rps": round(len(reqs) / serve_s, 1),
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
