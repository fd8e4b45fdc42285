"""What star-gateway adds to a stream, measured against the same upstream asked directly in the same run.

Starts a scorer on the shipped toy guard, the toy chat model (finetuned on harmful examples, as
examples/moderate_toy_chat.py does) behind star_testing's OpenAI-compatible server at
`--token-delay-ms` per token, and the gateway. Then, alternating direct and gateway requests:

- a benign chat stream, timed per event from the request's start: `added_ms_per_chunk_*` is the
  gateway's time to event i minus the direct time to event i, over all events of all rounds;
  `added_ttft_ms_p50` the same for the first text event. Measured with `hold_back_words` -1 (each chunk
  forwarded once pushed: the gateway's own cost) and 0 (each chunk waits for the score of the cut
  that covers it, which arrives when the next word after the cut begins), the latter under `hold_back_0`;
- a harmful stream through the gateway with hold-back -1: `stop_delay_cuts` is how many cuts' worth of
  words past the firing cut reached the client before the stop (0 with hold-back 0, by construction);
  `max_abs_diff` compares the stop's P(safe) with Score's for the same cut of the same text.

Inside the gateway (its /metrics, read before and after each hold-back -1 stream):
`gateway_own_ms_per_chunk_p50`/`_p99` is its own time per chunk, from a chunk's arrival from the upstream
to its handing to the HTTP server (SSE parsing, the push to the scorer, the gate);
`scorer_roundtrip_ms_p50` the time from the push that made a cut final to its score's arrival. What
`added_ms_per_chunk_p50` has beyond the own time is spent outside the gateway's code: the extra HTTP hop
and the processes (upstream, scorer, gateway, client) sharing the cores.

The last line is one JSON object. `--quick`: 3 rounds (under 45 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from star_client import ScorerClient  # noqa: E402
from star_contract.stop_rule import first_stop  # noqa: E402
from star_contract.types import Conversation, CutSpec, ModerateOptions, ScoreRequest  # noqa: E402
from tests.gateway_parts import (  # noqa: E402
    API_KEY,
    BENIGN,
    HARMFUL,
    MODEL,
    gateway_process,
    harmful_chat_model,
    start_scorer,
    upstream_process,
)


def timed_stream(url: str, prompt: str, hold: int | None) -> tuple[list[float], str, dict[str, Any]]:
    """(seconds from the request to each event, the text, the star_moderation info of the last chunk)."""
    body: dict[str, Any] = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    if hold is not None:
        body["star_moderation"] = {"hold_back_words": hold}
    times: list[float] = []
    text: str = ""
    info: dict[str, Any] = {}
    start = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {API_KEY}"}) as r:  # fmt: skip
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            times.append(time.perf_counter() - start)
            if line == "data: [DONE]":
                break
            chunk = json.loads(line[6:])
            text += chunk["choices"][0].get("delta", {}).get("content") or ""
            info = chunk.get("star_moderation", info)
    return times, text, info


Buckets = dict[float, float]


def buckets(url: str, name: str) -> Buckets:
    """The cumulative bucket counts {le: count} of the histogram `name` on the page at `url`."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url, timeout=10).text
    return {
        float(s.labels["le"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name + "_bucket"
    }


def diff(after: Buckets, before: Buckets, into: Buckets) -> None:
    for le, count in after.items():
        into[le] = into.get(le, 0.0) + count - before.get(le, 0.0)


def bucket_quantile(counts: Buckets, q: float) -> float:
    """The q-quantile of cumulative bucket counts, interpolated linearly inside its bucket (ms)."""
    edges = sorted(counts)
    total = counts[edges[-1]] if edges else 0.0
    if total <= 0:
        return float("nan")
    want, low, below = q * total, 0.0, 0.0
    for le in edges:
        if counts[le] >= want:
            if le == float("inf"):
                return 1000 * low
            inside = counts[le] - below
            return 1000 * (low + (le - low) * ((want - below) / inside if inside else 1.0))
        low, below = le, counts[le]
    return 1000 * low


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def added(direct: list[list[float]], through: list[list[float]]) -> tuple[list[float], list[float]]:
    per_chunk, ttft = [], []
    for d, g in zip(direct, through, strict=True):
        n = min(len(d), len(g))
        per_chunk += [1000 * (g[i] - d[i]) for i in range(n)]
        ttft.append(1000 * (g[1] - d[1]))  # event 0 is the role chunk; 1 the first text
    return per_chunk, ttft


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--token-delay-ms", type=float, default=20.0, help="the upstream's pace per token")
    args = ap.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        scorer = start_scorer(logs)
        upstream = upstream_process(Path("unset"), logs, args.token_delay_ms)
        gateway = gateway_process(upstream.url, scorer.address, logs).launch()
        procs = [gateway]
        try:
            model = harmful_chat_model(logs / "chat")
            upstream.cmd[upstream.cmd.index("--model") + 1] = str(model)
            procs.append(upstream.launch())
            for p in procs:
                p.wait()
            scorer.wait_serving()
            timed_stream(gateway.url, BENIGN, -1)  # warm both paths
            runs: dict[str, list[list[float]]] = {"direct": [], "-1": [], "0": []}
            page = gateway.url + "/metrics"
            own: Buckets = {}
            rtt: Buckets = {}
            for _ in range(rounds):
                runs["direct"].append(timed_stream(upstream.url, BENIGN, None)[0])
                before = buckets(page, "star_gateway_chunk_own_seconds")
                before_rtt = buckets(page, "star_gateway_scorer_roundtrip_seconds")
                runs["-1"].append(timed_stream(gateway.url, BENIGN, -1)[0])
                diff(buckets(page, "star_gateway_chunk_own_seconds"), before, own)
                diff(buckets(page, "star_gateway_scorer_roundtrip_seconds"), before_rtt, rtt)
                runs["direct"].append(timed_stream(upstream.url, BENIGN, None)[0])
                runs["0"].append(timed_stream(gateway.url, BENIGN, 0)[0])
            free, free_ttft = added(runs["direct"][0::2], runs["-1"])
            held, held_ttft = added(runs["direct"][1::2], runs["0"])
            delays, diffs = [], []
            with ScorerClient(scorer.address) as client:
                for _ in range(rounds):
                    _, shown, info = timed_stream(gateway.url, HARMFUL, -1)
                    _, full, _ = timed_stream(upstream.url, HARMFUL, None)
                    scores = client.score(ScoreRequest(Conversation.from_pair(HARMFUL, full), CutSpec()))
                    stop = first_stop(scores.segments, ModerateOptions())
                    assert stop is not None and info.get("cut") == stop.cut, (info, stop)
                    diffs.append(abs(info["p_safe"] - stop.p_safe))
                    delays.append(len(full[stop.cut : len(shown)].split()) / ModerateOptions().every)
        finally:
            for p in procs:
                p.stop()
            scorer.stop(10)
    result = {
        "added_ms_per_chunk_p50": round(statistics.median(free), 2),
        "added_ms_per_chunk_p99": round(pct(free, 0.99), 2),
        "added_ttft_ms_p50": round(statistics.median(free_ttft), 2),
        "stop_delay_cuts": round(max(delays), 2),
        "max_abs_diff": max(diffs),
        "gateway_own_ms_per_chunk_p50": round(bucket_quantile(own, 0.5), 3),
        "gateway_own_ms_per_chunk_p99": round(bucket_quantile(own, 0.99), 3),
        "scorer_roundtrip_ms_p50": round(bucket_quantile(rtt, 0.5), 2),
        "hold_back_0": {
            "added_ms_per_chunk_p50": round(statistics.median(held), 2),
            "added_ms_per_chunk_p99": round(pct(held, 0.99), 2),
            "added_ttft_ms_p50": round(statistics.median(held_ttft), 2),
            "stop_delay_cuts": 0,
        },
        "rounds": rounds,
        "token_delay_ms": args.token_delay_ms,
        "chunks_per_stream": len(runs["direct"][0]),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
