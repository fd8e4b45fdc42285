"""Soak: three scorer replicas, sixteen trainers' worth of ScoreStream traffic and live-moderation sessions,
with a replica SIGKILLed and restarted every `STAR_SOAK_KILL_EVERY_S` seconds, for `STAR_SOAK_S` seconds
(10 by default so that CI runs it: three kills and restarts, a third of the soak apart; `STAR_SOAK_S=600`
for the recorded run).

At the end: every call answered (0 lost), no error of any kind (0 INTERNAL), every score equal to the
reference, and the memory (RSS) of the replica that was never killed and of the clients' process within
1.5x of what it was after warm-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import threading
import traceback
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from star_client import AsyncScorerClient, ClientConfig
from star_contract.types import Conversation, CutSpec, ModerateOptions, ScoreRequest, Segment, StarScores
from star_testing.scorer_process import ScorerProcess, free_port

SOAK_S = float(os.environ.get("STAR_SOAK_S", "10"))
KILL_EVERY_S = float(os.environ.get("STAR_SOAK_KILL_EVERY_S", str(min(20.0, SOAK_S / 3))))
TRAINERS = 16
SESSIONS = 2
CONFIG = ClientConfig(deadline_s=120, max_in_flight=8, reconnect_backoff_max_s=1.0)
SENTENCE = "mix the flour with water then knead it well and bake the loaf until it is golden brown"
WORDS = SENTENCE.split()
REQS = [
    ScoreRequest(Conversation.from_pair(f"question {i}", " ".join(WORDS[: 4 + i % 12]) + f" {i}"), CutSpec())
    for i in range(32)
]
PROMPT = "How do I bake bread?"
RESPONSE = " ".join(WORDS * 2)
OPTIONS = ModerateOptions(every=3, unsafe_below=0.0)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(SOAK_S + 300)]


def rss_kib(proc: ScorerProcess | None = None) -> int:
    """Resident memory of a scorer process (or of this one), KiB."""
    pid = os.getpid() if proc is None else proc.proc.pid if proc.proc else -1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def p_safes(scores: list[StarScores]) -> list[list[float]]:
    return [[s.p_safe for s in x.segments] for x in scores]


def ends(segments: list[Segment]) -> list[int]:
    return [s.end for s in segments]


def close_enough(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-5 for x, y in zip(a, b, strict=True))


def test_soak_three_replicas_one_killed_every_interval(tiny_guard_dir: Path, tmp_path: Path) -> None:
    args = ["--guard", str(tiny_guard_dir), "--preset", "llama-guard-3", "--max-wait-ms", "5"]
    replicas = [
        ScorerProcess(args, tmp_path / f"replica-{k}.log", free_port(), free_port()).start() for k in range(3)
    ]
    steady, victims = replicas[0], replicas[1:]
    addresses = ",".join(r.address for r in replicas)
    counts: Counter[str] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def chaos() -> None:
        k = 0
        while not stop.wait(KILL_EVERY_S):
            victim = victims[k % len(victims)]
            victim.kill()
            counts["kills"] += 1
            victim.launch()  # same address; it answers again once its guard is loaded
            k += 1

    async def trainer(reference: list[list[float]]) -> None:
        async with AsyncScorerClient(addresses, CONFIG) as client:
            while not stop.is_set():
                try:
                    got = await client.score_many(REQS)
                except Exception as exc:  # every failure is a finding, whatever its kind
                    errors.append("score: " + "".join(traceback.format_exception(exc)))
                    return
                counts["calls"] += len(REQS)
                counts["mismatches"] += sum(
                    not close_enough(g, w) for g, w in zip(p_safes(got), reference, strict=True)
                )

    async def moderator(reference: list[Segment]) -> None:
        async with AsyncScorerClient(addresses, CONFIG) as client:
            while not stop.is_set():
                try:
                    async with client.moderate(Conversation.from_pair(PROMPT, ""), OPTIONS) as session:
                        async for _ in session.guard(_chunks(RESPONSE), reopen=3):
                            pass
                except Exception as exc:
                    errors.append("moderate: " + "".join(traceback.format_exception(exc)))
                    return
                counts["sessions"] += 1
                counts["reopened"] += session.reopened
                same_cuts = [s.end for s in session.segments] == [s.end for s in reference]
                got, want = [s.p_safe for s in session.segments], [s.p_safe for s in reference]
                if not (same_cuts and close_enough(got, want)):
                    counts["mismatches"] += 1
                    errors.append(f"moderate: cuts {[s.end for s in session.segments]} != {ends(reference)}")

    async def main() -> tuple[int, int]:
        async with AsyncScorerClient(steady.address, CONFIG) as one:
            reference = p_safes(await one.score_many(REQS))
            async with one.moderate(Conversation.from_pair(PROMPT, ""), OPTIONS) as session:
                async for _ in session.guard(_chunks(RESPONSE)):
                    pass
                ref_segments = list(session.segments)
        tasks = [asyncio.ensure_future(trainer(reference)) for _ in range(TRAINERS)]
        tasks += [asyncio.ensure_future(moderator(ref_segments)) for _ in range(SESSIONS)]
        await asyncio.sleep(min(5.0, SOAK_S / 4))  # warm-up: streams open, caches and pools filled
        warm = (rss_kib(steady), rss_kib())
        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        await asyncio.sleep(SOAK_S)
        stop.set()
        chaos_thread.join(30)
        await asyncio.gather(*tasks)
        return warm

    try:
        warm = asyncio.run(main())
        end = (rss_kib(steady), rss_kib())
    finally:
        stop.set()
        for r in replicas:
            r.stop(10)
    report = {
        "soak_s": SOAK_S,
        "kill_every_s": KILL_EVERY_S,
        **counts,
        "errors": len(errors),
        "rss_steady_replica_kib": [warm[0], end[0]],
        "rss_clients_kib": [warm[1], end[1]],
        "max_rss_clients_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print("soak:", json.dumps(report))
    for e in errors[:3]:
        print("soak error:", e)
    assert errors == [], errors[:5]
    assert counts["kills"] >= 2 and counts["calls"] > 0 and counts["sessions"] > 0
    assert counts["mismatches"] == 0
    assert end[0] <= 1.5 * warm[0] and end[1] <= 1.5 * warm[1], report


async def _chunks(text: str) -> AsyncIterator[str]:
    for i in range(0, len(text), 6):
        yield text[i : i + 6]
        await asyncio.sleep(0.002)  # a model generating
