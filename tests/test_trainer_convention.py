"""The trainer asks for the STAR convention its recipe names, and caches each convention apart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from scorer_server.engine.engine import StarEngine
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from star_contract.types import Convention, Conversation, CutKind, CutSpec, ScoreRequest
from star_testing.tiny_chat import CHAT_TEMPLATE
from star_testing.tiny_guard import TinyGuardSpec, build_tokenizer
from trainer_client.data import build_examples
from trainer_client.in_process import LocalScorer
from trainer_client.scoring.prefetch import cut_key
from trainer_client.train.config import build_config, load_config

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_published_recipe_uses_the_published_convention() -> None:
    cfg = load_config(str(EXAMPLES / "published.yaml"), ["model=m", "data=d", "scorer=h:1"])
    assert cfg.example_options()["convention"] is Convention.PUBLISHED
    plain = build_config({"model": "m", "output_dir": "out", "data": "d", "method": "sft"})
    assert plain.example_options()["convention"] is Convention.RAW


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"star_convention": "vendor"}, "star_convention must be one of"),
        ({"star_convention": "published", "score_temperature": 2.0}, "fixes its own temperature"),
    ],
)
def test_bad_convention_settings_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_config({"model": "m", "output_dir": "out", "data": "d", "method": "sft", **overrides})


def test_conventions_are_cached_under_different_keys() -> None:
    conv = Conversation.from_pair("q", "a b")
    raw = ScoreRequest(conv, CutSpec(CutKind.WORDS, 5))
    published = ScoreRequest(conv, CutSpec(CutKind.WORDS, 5), convention=Convention.PUBLISHED)
    assert cut_key(raw) == raw.cuts.key()  # keys written before conventions existed still match
    assert cut_key(published) == f"{raw.cuts.key()}|C=published"


def test_trainee_requests_carry_the_convention_to_the_scorer(tiny_guard_dir: Path) -> None:
    tok = build_tokenizer(TinyGuardSpec(family="llama"))
    tok.chat_template = CHAT_TEMPLATE
    conv = Conversation.from_pair("How do I bake bread?", "Mix the flour,\n\nthen  bake it at 220 C.")
    (example,) = build_examples(tok, [conv], words_per_chunk=3, convention=Convention.PUBLISHED)
    (turn,) = example.turns
    assert turn.request.convention is Convention.PUBLISHED and turn.request.cuts.kind is CutKind.OFFSETS
    engine = StarEngine(load_guard(GuardConfig(path=str(tiny_guard_dir))))
    served = asyncio.run(LocalScorer(engine).score(turn.request))
    raw = engine.score([ScoreRequest(turn.request.conversation, turn.request.cuts)])[0]
    assert served == engine.score([turn.request])[0]
    assert [s.end for s in served.segments] == [s.end for s in raw.segments]  # same trainee offsets
    assert served != raw
