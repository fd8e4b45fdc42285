"""The checks scripts/container_smoke.sh runs from the host against the containers it started.

Each subcommand prints one `ok ...` line or exits non-zero with a `FAIL ...` line:

  inputs OUT N                 N toy conversations (JSONL for `star-client score`)
  engine ADDR IN               Score over gRPC equals the in-process engine on the shipped toy guard
  auth ADDR TOKEN              no token: UNAUTHENTICATED; TOKEN: served; health needs no token
  metrics URL                  the Prometheus endpoint serves star_queue_depth
  counter URL NAME             print the value of the Prometheus sample NAME at URL (0 if absent)
  drain ADDR IN CONTAINER [TOKEN]  SIGTERM to CONTAINER while IN is in flight: every request answered
  same A B                     two `star-client score` outputs hold the same ids and scores
  pki DIR NAME                 a throwaway CA, DIR/good (names NAME) and DIR/bad (lacks NAME)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "star_toy" / "models"
TOLERANCE = 1e-5
"""Largest |p_safe difference| allowed between two float32 CPU runs (batch composition moves the
last bits; see README)."""


def fail(msg: str) -> int:
    print(f"FAIL {msg}", file=sys.stderr)
    return 1


def _requests(path: Path) -> list[Any]:
    from star_contract.types import Conversation, CutKind, CutSpec, ScoreRequest

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [ScoreRequest(Conversation.from_dicts(r["messages"]), CutSpec(CutKind.WORDS, 5)) for r in rows]


def _diff(a: Any, b: Any) -> float:
    """Largest |p_safe| difference between two StarScores; inf when their cuts differ."""
    if [s.end for s in a.segments] != [s.end for s in b.segments]:
        return float("inf")
    return max((abs(x.p_safe - y.p_safe) for x, y in zip(a.segments, b.segments, strict=True)), default=0.0)


def inputs(out: str, n: str) -> int:
    lines = (TOY / "data" / "finetune.jsonl").read_text().splitlines()
    with Path(out).open("w") as fh:
        for i in range(int(n)):
            row = json.loads(lines[i % len(lines)])
            fh.write(json.dumps({"id": i, "messages": row["messages"]}) + "\n")
    print(f"ok   wrote {n} toy conversations to {out}")
    return 0


def engine(addr: str, path: str) -> int:
    from star_client import ClientConfig, ScorerClient
    from trainer_client.in_process import load_engine

    reqs = _requests(Path(path))
    with ScorerClient(addr, ClientConfig(deadline_s=60)) as client:
        served = client.score_many(reqs)
    local = load_engine(TOY / "guard").score(reqs)
    worst = max(_diff(a, b) for a, b in zip(served, local, strict=True))
    cuts = sum(len(s.segments) for s in served)
    if worst > TOLERANCE:
        return fail(f"scores over gRPC differ from the in-process engine by {worst}")
    shape = f"{len(reqs)} responses, {cuts} cuts, max diff {worst:.1e}"
    print(f"ok   Score over gRPC == in-process engine ({shape})")
    return 0


def auth(addr: str, token: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from star_client import ClientConfig, ScorerCallError, ScorerClient
    from star_contract.types import Conversation, ScoreRequest

    req = ScoreRequest(Conversation.from_pair("hello", "hi there , how can i help ?"))
    try:
        with ScorerClient(addr, ClientConfig(deadline_s=20, retries=0)) as client:
            client.score(req)
        return fail("a call without a token was served although the auth Secret exists")
    except ScorerCallError as err:
        if err.code != grpc.StatusCode.UNAUTHENTICATED:
            return fail(f"a call without a token got {err.code.name}, not UNAUTHENTICATED")
    with ScorerClient(addr, ClientConfig(deadline_s=20, auth_token=token)) as client:
        client.score(req)
    with grpc.insecure_channel(addr) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return fail("health without a token is not SERVING")
    print("ok   auth Secret present: no token -> UNAUTHENTICATED, token -> served, health exempt")
    return 0


def metrics(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("star_queue_depth")]
    if not lines:
        return fail(f"{url} serves no star_queue_depth")
    print(f"ok   {url} serves {lines[0]}")
    return 0


def counter(url: str, name: str) -> int:
    print(int(_gauge(url, name)))
    return 0


def _gauge(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    values = [line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(values[0]) if values else 0.0


async def _drain(addr: str, path: str, container: str, token: str | None = None) -> int:
    """SIGTERM once the server holds every unanswered request (star_queue_depth counts them), so that
    each one is in flight: requests sent after SIGTERM are refused (UNAVAILABLE, for the client to
    retry elsewhere) and would not test draining."""
    from star_client import AsyncScorerClient, ClientConfig

    reqs = _requests(Path(path))
    metrics_url = f"http://{addr.rsplit(':', 1)[0]}:9090/metrics"
    config = ClientConfig(
        addresses=(addr,), deadline_s=120, max_in_flight=len(reqs), retries=0, auth_token=token
    )
    async with AsyncScorerClient(config=config) as client:
        tasks = [asyncio.create_task(client.score(r)) for r in reqs]
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while True:
            done = sum(t.done() for t in tasks)
            depth = await asyncio.to_thread(_gauge, metrics_url, "star_queue_depth")
            if done < len(reqs) and depth + done >= len(reqs):
                break
            if done == len(reqs) or loop.time() > end:
                return fail(f"the scorer never held all {len(reqs)} requests at once ({done} answered)")
            await asyncio.sleep(0.05)
        subprocess.run(["podman", "kill", "--signal", "TERM", container], check=True, capture_output=True)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        return fail(f"{len(errors)} of {len(reqs)} in-flight requests failed after SIGTERM: {errors[0]}")
    print(f"ok   SIGTERM with {int(depth)} of {len(reqs)} requests held by the scorer: all answered")
    return 0


def same(a: str, b: str) -> int:
    rows_a = [json.loads(line) for line in Path(a).read_text().splitlines()]
    rows_b = [json.loads(line) for line in Path(b).read_text().splitlines()]
    if [r["id"] for r in rows_a] != [r["id"] for r in rows_b]:
        return fail(f"{a} and {b} hold different conversations ({len(rows_a)} vs {len(rows_b)} rows)")
    worst = 0.0
    for x, y in zip(rows_a, rows_b, strict=True):
        if [s[0] for s in x["segments"]] != [s[0] for s in y["segments"]]:
            return fail(f"row {x['id']}: different cuts")
        worst = max([worst, *(abs(s[1] - t[1]) for s, t in zip(x["segments"], y["segments"], strict=True))])
    if worst > TOLERANCE:
        return fail(f"{a} and {b} differ by up to {worst}")
    print(f"ok   {len(rows_a)} conversations, same scores as the single-replica run (max diff {worst:.1e})")
    return 0


def pki(out: str, name: str) -> int:
    from star_testing.pki import issue, make_ca

    d = Path(out)
    ca = make_ca(d / "good")
    issue(ca, d / "good", [name, name.split(".")[0]])
    (d / "bad").mkdir(parents=True, exist_ok=True)
    (d / "bad" / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    issue(ca, d / "bad", ["star-scorer.star.svc.cluster.local"])
    print(f"ok   throwaway CA; certificate with {name} in {d / 'good'}, without it in {d / 'bad'}")
    return 0


COMMANDS: dict[str, Callable[..., int]] = {
    "inputs": inputs,
    "engine": engine,
    "auth": auth,
    "metrics": metrics,
    "counter": counter,
    "drain": lambda *args: asyncio.run(_drain(*args)),
    "same": same,
    "pki": pki,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    result: int = COMMANDS[argv[0]](*argv[1:])
    return result


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
