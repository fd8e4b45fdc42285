"""Several guards: combined per cut (mean / min), cached per guard, cut mismatches refused, disagreement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from star_contract.types import Conversation, GuardInfo, ScoreRequest, Segment, StarScores, Verdict
from star_testing.tiny_chat import save_tiny_trainee
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard
from trainer_client.alignment import cut_spec
from trainer_client.data import Example, ScoredTurn, guard_view
from trainer_client.in_process import LocalScorer
from trainer_client.scoring.cache import ScoreCache
from trainer_client.scoring.ensemble import Combine, EnsembleScorer, ensemble_fingerprint
from trainer_client.scoring.precompute import main as precompute_main
from trainer_client.scoring.prefetch import AsyncScorer, ExampleScores, ScoreFetcher, score_key
from trainer_client.scoring.select import scorer_from, split_local
from trainer_client.train import run_training
from trainer_client.train.config import build_config
from trainer_client.train.metrics import guard_disagreement

RESPONSES = [
    "Sure, here is how to do it step by step. First, take the flour; then mix the rest.",
    "I cannot help with that request. As an AI, I'm sorry.",
    "The quick brown fox jumps over the lazy dog, then sorts a list in reverse.",
]


@pytest.fixture(scope="module")
def guards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("two-guards")
    return (
        save_tiny_guard(root / "a", TinyGuardSpec(seed=1)),
        save_tiny_guard(root / "b", TinyGuardSpec(seed=2)),
    )


class Counting:
    """Wraps a scorer and counts the requests it is asked to score."""

    def __init__(self, inner: AsyncScorer) -> None:
        self.inner = inner
        self.scored = 0

    async def info(self) -> GuardInfo:
        return await self.inner.info()

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        self.scored += len(requests)
        return await self.inner.score_many(requests, priority)

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        return await self.inner.judge(conversations)

    async def close(self) -> None:
        await self.inner.close()


class Fixed:
    """A fake guard: fixed P(safe) trajectories and verdicts, in order of the responses it is given."""

    def __init__(self, fp: str, segs: list[list[tuple[int, float]]], p_unsafe: list[float]) -> None:
        self.fp, self.segs, self.p_unsafe = fp, segs, p_unsafe

    async def info(self) -> GuardInfo:
        return GuardInfo(self.fp, "fake", "safe", "unsafe", 1, 2, self.fp)

    async def score_many(self, requests: Sequence[ScoreRequest], priority: int = 0) -> list[StarScores]:
        return [StarScores(tuple(Segment(e, p) for e, p in self.segs[i])) for i in range(len(requests))]

    async def judge(self, conversations: Sequence[Conversation]) -> list[Verdict]:
        return [Verdict(p) for p in self.p_unsafe[: len(conversations)]]

    async def close(self) -> None:
        return None


def _requests() -> list[ScoreRequest]:
    out = []
    for i, r in enumerate(RESPONSES):
        conv = Conversation.from_pair(f"question {i}?", r)
        out.append(ScoreRequest(guard_view(conv), cut_spec((10, 30, len(r)))))
    return out


def _examples() -> list[Example]:
    out = []
    for i, r in enumerate(_requests()):
        turn = ScoredTurn(r, (1, 2), (10, 30, len(r.conversation.response)))
        out.append(Example(i, (1, 2, 3), (0, 1, 1), (turn,), r.conversation))
    return out


def _p(scores: StarScores) -> list[float]:
    return [s.p_safe for s in scores.segments]


@pytest.mark.parametrize("rule", ["mean", "min"])
def test_combined_scores_are_the_per_cut_rule_of_each_guards_own(
    guards: tuple[Path, Path], rule: Combine
) -> None:
    reqs = _requests()
    a, b = (LocalScorer.from_dir(str(g)) for g in guards)
    own_a = asyncio.run(a.score_many(reqs))
    own_b = asyncio.run(b.score_many(reqs))
    assert any(_p(x) != _p(y) for x, y in zip(own_a, own_b, strict=True)), "the two guards must differ"
    both = EnsembleScorer([LocalScorer(a.engine), LocalScorer(b.engine)], rule)
    got = asyncio.run(both.score_many(reqs))
    for sa, sb, sc in zip(own_a, own_b, got, strict=True):
        assert [s.end for s in sc.segments] == [s.end for s in sa.segments]
        want = [min(x, y) if rule == "min" else (x + y) / 2 for x, y in zip(_p(sa), _p(sb), strict=True)]
        assert _p(sc) == pytest.approx(want, abs=1e-9)
        assert sc.guard_tokens == sa.guard_tokens + sb.guard_tokens


def test_guard_a_cache_is_reused_and_guard_b_lands_under_its_own_fingerprint(
    guards: tuple[Path, Path], tmp_path: Path
) -> None:
    exs, reqs = _examples(), _requests()
    a_engine = LocalScorer.from_dir(str(guards[0])).engine
    fp_a = asyncio.run(LocalScorer(a_engine).info()).fingerprint
    cache = ScoreCache(tmp_path / "c.sqlite")
    alone = Counting(LocalScorer(a_engine))
    first = asyncio.run(ScoreFetcher(alone, fp_a, cache).fetch(exs, star=True, verdicts=False))
    assert alone.scored == len(exs) and cache.count() == len(exs)

    a_again = Counting(LocalScorer(a_engine))
    b = Counting(LocalScorer.from_dir(str(guards[1])))
    ens = EnsembleScorer([a_again, b])
    fp_b = asyncio.run(b.info()).fingerprint
    fp_ens = asyncio.run(ens.info()).fingerprint
    assert fp_ens not in (fp_a, fp_b) and fp_ens == ensemble_fingerprint([fp_b, fp_a], "mean")
    fetcher = ScoreFetcher(ens, fp_ens, cache)
    got = asyncio.run(fetcher.fetch(exs, star=True, verdicts=False))
    assert a_again.scored == 0, "guard A's cached scores must be reused"
    assert b.scored == len(exs) and fetcher.scored_requests == len(exs)
    cached_b = cache.get_scores([score_key(fp_b, r) for r in reqs])
    own_b = asyncio.run(LocalScorer.from_dir(str(guards[1])).score_many(reqs))
    assert [_p(c) for c in cached_b if c] == [_p(s) for s in own_b]
    assert cache.count() == 2 * len(exs)
    for one, ens_scores, sb in zip(first, got, own_b, strict=True):
        assert [g.scores for g in ens_scores.guards] == [one.scores, (sb,)]
        want = [(x + y) / 2 for x, y in zip(_p(one.scores[0]), _p(sb), strict=True)]
        assert _p(ens_scores.scores[0]) == pytest.approx(want, abs=1e-9)


def test_mismatched_cut_offsets_are_a_clear_error() -> None:
    ens = EnsembleScorer([Fixed("fa", [[(5, 0.9), (20, 0.8)]], []), Fixed("fb", [[(6, 0.9), (20, 0.8)]], [])])
    with pytest.raises(ValueError, match=r"different cuts.*guard 0 cut at \[5, 20\], guard 1 at \[6, 20\]"):
        asyncio.run(ens.score_many(_requests()[:1]))


def test_one_guard_twice_and_too_few_guards_are_errors() -> None:
    with pytest.raises(ValueError, match=r"scorers\[0\] and scorers\[1\] serve the same guard"):
        asyncio.run(EnsembleScorer([Fixed("same", [], []), Fixed("same", [], [])]).info())
    with pytest.raises(ValueError, match="at least 2 guards"):
        EnsembleScorer([Fixed("one", [], [])])


def test_fingerprint_names_the_set_of_guards_and_the_rule() -> None:
    assert ensemble_fingerprint(["a", "b"], "mean") == ensemble_fingerprint(["b", "a"], "mean")
    assert ensemble_fingerprint(["a", "b"], "mean") != ensemble_fingerprint(["a", "b"], "min")
    assert ensemble_fingerprint(["a", "b"], "mean") != ensemble_fingerprint(["a", "c"], "mean")
    assert ensemble_fingerprint(["a", "b"], "mean").startswith("ensemble:")


@pytest.mark.parametrize(("rule", "keeps"), [("mean", [1.0, 0.0]), ("min", [0.0, 0.0])])
def test_rs_keeps_by_the_combined_verdict(rule: Combine, keeps: list[float]) -> None:
    # P(unsafe): A 0.6 / 0.9, B 0.2 / 0.3 -> mean 0.4 (keep) / 0.6 (drop); min of P(safe): 0.4 / 0.1
    ens = EnsembleScorer([Fixed("fa", [], [0.6, 0.9]), Fixed("fb", [], [0.2, 0.3])], rule)
    exs = _examples()[:2]
    got = asyncio.run(ScoreFetcher(ens, "e", None).fetch(exs, star=False, verdicts=True))
    assert [g.keep for g in got] == keeps
    assert [[x.keep for x in g.guards] for g in got] == [[0.0, 1.0], [0.0, 1.0]]
    v = asyncio.run(ens.judge([r.conversation for r in _requests()[:2]]))
    assert [x.p_unsafe for x in v] == pytest.approx([0.4, 0.6] if rule == "mean" else [0.6, 0.9])


def _ex(*guards: tuple[list[list[float]], float]) -> ExampleScores:
    """An example's per-guard scores: for each guard, P(safe) per cut of each turn, and its keep."""
    each = tuple(
        ExampleScores(tuple(StarScores(tuple(Segment(k, p) for k, p in enumerate(t))) for t in turns), keep)
        for turns, keep in guards
    )
    return ExampleScores(each[0].scores, 1.0, each)


def test_disagreement_metrics_by_hand() -> None:
    rows = [
        _ex(([[0.9, 0.4]], 1.0), ([[0.7, 0.6]], 1.0)),  # |diff| 0.2, 0.2; the second cut splits
        _ex(([[0.2]], 0.0), ([[0.3]], 1.0)),  # |diff| 0.1, no split; verdicts split
    ]
    got = guard_disagreement(rows, verdicts=True)
    assert got["guards_abs_diff"] == pytest.approx(0.5 / 3)
    assert got["guards_split_share"] == pytest.approx(1 / 3)
    assert got["guards_verdict_split_share"] == pytest.approx(1 / 2)
    # three guards: pairs (0.9, 0.5) (0.9, 0.2) (0.5, 0.2) -> (0.4 + 0.7 + 0.3) / 3; 0.2 < 0.5 <= 0.9
    three = guard_disagreement([_ex(([[0.9]], 1.0), ([[0.5]], 1.0), ([[0.2]], 1.0))])
    assert three == pytest.approx({"guards_abs_diff": 1.4 / 3, "guards_split_share": 1.0})
    assert guard_disagreement([ExampleScores((StarScores((Segment(3, 0.2),)),))]) == {}


def test_local_entries_may_name_their_preset() -> None:
    assert split_local("local:/g/granite@granite-guardian-3", "llama-guard-3") == (
        "/g/granite",
        "granite-guardian-3",
    )
    assert split_local("local:/g/v@2/guard", "llama-guard-3") == ("/g/v@2/guard", "llama-guard-3")

    async def made() -> type:
        scorer = scorer_from(None, None, "llama-guard-3", ["127.0.0.1:1", "127.0.0.1:2"])()
        await scorer.close()
        return type(scorer)

    assert asyncio.run(made()) is EnsembleScorer


def test_a_run_with_two_guards_logs_their_disagreement_and_precompute_writes_the_combination(
    guards: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_tiny_trainee(tmp_path / "trainee")
    with (tmp_path / "data.jsonl").open("w") as fh:
        for i, r in enumerate(RESPONSES * 2):
            fh.write(json.dumps({"prompt": f"How do I do thing {i}?", "response": r}) + "\n")
    cfg: dict[str, Any] = dict(
        model=str(tmp_path / "trainee"),
        data=str(tmp_path / "data.jsonl"),
        output_dir=str(tmp_path / "out"),
        scorers=[f"local:{g}" for g in guards],
        batch_size=3,
        progress=False,
        lora_r=4,
        lora_alpha=8,
    )
    result = run_training(build_config(cfg))
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert all(0 < r["guards_abs_diff"] < 1 and 0 <= r["guards_split_share"] <= 1 for r in rows)
    assert "guards_verdict_split_share" not in rows[0]
    assert result.metrics["guards_abs_diff"] == pytest.approx(sum(r["guards_abs_diff"] for r in rows) / 2)
    assert result.metrics["guard_requests"] == 2 * len(RESPONSES) * 2

    # star-score-dataset on the same recipe: every guard's scores come from the run's cache, and the
    # file holds the combined scores under the combination's fingerprint
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({k: v for k, v in cfg.items() if k != "progress"}))
    assert precompute_main(["--config", str(recipe), "--out", str(tmp_path / "s.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["guard_requests"] == 0
    records = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    members = [LocalScorer.from_dir(str(g)) for g in guards]
    fps = [asyncio.run(m.info()).fingerprint for m in members]
    assert {r["fingerprint"] for r in records} == {ensemble_fingerprint(fps, "mean")}
    cache = ScoreCache(tmp_path / "out" / "score_cache.sqlite")
    for r in records:
        a, b = cache.get_scores([(fp, r["content"], r["cut_key"]) for fp in fps])
        assert a is not None and b is not None
        want = [(x + y) / 2 for x, y in zip(_p(a), _p(b), strict=True)]
        assert [p for _, p in r["segments"]] == pytest.approx(want, abs=1e-9)
    cache.close()
