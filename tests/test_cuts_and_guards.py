"""Cut planning, guard presets, template splitting and verdict tokens."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from scorer_server.engine.cuts import plan_cuts
from scorer_server.guards.guard_config import GuardConfig
from scorer_server.guards.loader import load_guard
from scorer_server.guards.presets import get_preset
from scorer_server.guards.verdict import parse_categories
from star_contract.errors import InvalidRequest
from star_contract.types import Conversation, CutKind, CutSpec, Segment, StarScores
from star_testing.tiny_guard import TinyGuardSpec, save_tiny_guard


def test_word_cuts_every_m_words_and_full_response_last() -> None:
    r = "one two three four five six seven"
    assert plan_cuts(r, CutSpec(every=5)) == [len("one two three four five"), len(r)]
    assert plan_cuts(r, CutSpec(every=2)) == [7, 18, 27, len(r)]


def test_word_cuts_last_chunk_absorbs_trailing_whitespace() -> None:
    r = "a b c d e  \n"
    assert plan_cuts(r, CutSpec(every=5)) == [len(r)]
    assert plan_cuts("a b c d e f ", CutSpec(every=5)) == [9, 12]


def test_empty_and_blank_responses_get_one_cut() -> None:
    assert plan_cuts("", CutSpec()) == [0]
    assert plan_cuts("   ", CutSpec()) == [3]
    assert plan_cuts("", CutSpec(kind=CutKind.OFFSETS)) == [0]


def test_offset_cuts_are_validated() -> None:
    assert plan_cuts("hello world", CutSpec(kind=CutKind.OFFSETS, offsets=(5,))) == [5, 11]
    assert plan_cuts("hello world", CutSpec(kind=CutKind.OFFSETS, offsets=(5, 11))) == [5, 11]
    for bad in [(0,), (5, 5), (6, 3), (12,), (-1,)]:
        with pytest.raises(InvalidRequest, match="cut offset"):
            plan_cuts("hello world", CutSpec(kind=CutKind.OFFSETS, offsets=bad))
    with pytest.raises(InvalidRequest, match=">= 1"):
        plan_cuts("hello", CutSpec(every=0))


def test_guard_token_cuts(tmp_path: Path) -> None:
    g = load_guard(GuardConfig(path=str(save_tiny_guard(tmp_path / "g")), preset="llama-guard-3"))
    r = "Sure, here is how to do it step by step."
    enc = g.tokenizer(r, add_special_tokens=False, return_offsets_mapping=True)
    # the tiny guard's tokenizer is trained deterministically; its 18 tokens of r (len 40):
    assert [r[s:e] for s, e in enc["offset_mapping"]] == [
        "Sur", "e", ",", " h", "er", "e", " is", " h", "ow", " to", " do", " ", "it", " step", " b", "y",
        " step", ".",
    ]  # fmt: skip
    # ends of tokens 3, 6, 9, 12, 15, 18: "Sure," 5, "Sure, here" 10, "... how" 17, "... do " 24,
    # "... step b" 33, and token 18 ends at len(r) = 40, which is the final cut anyway
    assert plan_cuts(r, CutSpec(kind=CutKind.GUARD_TOKENS, every=3), g.tokenizer) == [5, 10, 17, 24, 33, 40]
    # ends of tokens 4, 8, 12, 16: 7, 15, 24, 34; then the response end 40
    assert plan_cuts(r, CutSpec(kind=CutKind.GUARD_TOKENS, every=4), g.tokenizer) == [7, 15, 24, 34, 40]
    # a trailing space is token 19 (41): every=3 still cuts after token 18 (40), then at the end, 41
    assert plan_cuts(r + " ", CutSpec(kind=CutKind.GUARD_TOKENS, every=3), g.tokenizer) == [
        5, 10, 17, 24, 33, 40, 41,
    ]  # fmt: skip


class WordTokenizer:
    """A tokenizer stand-in: a special token with offsets (0, 0), then one token per word (the
    whitespace between words belongs to no token, so trailing whitespace is left uncovered)."""

    def __call__(self, text: str, add_special_tokens: bool, return_offsets_mapping: bool) -> dict[str, Any]:
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        return {"offset_mapping": [(0, 0), *words]}


def test_guard_token_cuts_skip_special_tokens_and_end_at_the_response_end() -> None:
    tok = WordTokenizer()
    r = "aa b cc d e  "  # words end at 2, 4, 7, 9, 11; len 13
    # the (0, 0) special token is not counted: every 2nd word end is 4, 9; then the end, 13
    assert plan_cuts(r, CutSpec(kind=CutKind.GUARD_TOKENS, every=2), tok) == [4, 9, 13]
    # the last token (ends 11) would be a cut: it is moved to the response end so the trailing
    # whitespace belongs to the last chunk (not [11, 13])
    assert plan_cuts(r, CutSpec(kind=CutKind.GUARD_TOKENS, every=5), tok) == [13]
    assert plan_cuts(r.strip(), CutSpec(kind=CutKind.GUARD_TOKENS, every=1), tok) == [2, 4, 7, 9, 11]
    assert plan_cuts("   ", CutSpec(kind=CutKind.GUARD_TOKENS, every=1), tok) == [3]


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="llama-guard-3"):
        get_preset("nope")
    with pytest.raises(ValueError, match="--safe-word"):
        GuardConfig(path=".", preset="custom").resolved_preset()


def test_verdict_prefix_is_read_from_the_template(tmp_path: Path) -> None:
    with_nl = save_tiny_guard(tmp_path / "a", TinyGuardSpec(header_newlines=True))
    without = save_tiny_guard(tmp_path / "b", TinyGuardSpec(header_newlines=False))
    ga = load_guard(GuardConfig(path=str(with_nl)))
    gb = load_guard(GuardConfig(path=str(without)))
    assert ga.template.verdict_prefix == ""
    assert gb.template.verdict_prefix == "\n\n"
    conv = Conversation.from_pair("hi", "hello")
    assert ga.template.render(conv) == gb.template.render(conv)
    assert ga.safe_id == ga.tokenizer.convert_tokens_to_ids("safe")
    assert ga.safe_id != ga.unsafe_id


def test_policy_template_kwargs_change_prompt_and_fingerprint(tmp_path: Path) -> None:
    path = str(save_tiny_guard(tmp_path / "g"))
    default = load_guard(GuardConfig(path=path))
    custom = load_guard(GuardConfig(path=path, template_kwargs={"categories": "S1: Toy hazards."}))
    conv = Conversation.from_pair("hi", "hello")
    assert "S1: Toy hazards." in custom.template.render(conv)
    assert "S13: Elections." in default.template.render(conv)
    assert default.fingerprint != custom.fingerprint
    assert load_guard(GuardConfig(path=path)).fingerprint == default.fingerprint


def test_template_file_overrides_tokenizer_template(tmp_path: Path) -> None:
    path = str(save_tiny_guard(tmp_path / "g"))
    tpl = tmp_path / "t.jinja"
    tpl.write_text(
        "Judge: {% for m in messages %}{{ m['role'] }}={{ m['content'] }};{% endfor %} 'safe'/'unsafe':"
    )
    g = load_guard(GuardConfig(path=path, template_file=str(tpl)))
    assert (
        g.template.render(Conversation.from_pair("q", "a")) == "Judge: user=q;assistant=a; 'safe'/'unsafe':"
    )
    split = g.template.split(Conversation.from_pair("q", "a"))
    assert split.head == "Judge: user=q;assistant=" and split.suffix == "; 'safe'/'unsafe':"


def test_custom_preset_and_bad_directory(tmp_path: Path) -> None:
    path = str(save_tiny_guard(tmp_path / "g"))
    g = load_guard(GuardConfig(path=path, preset="custom", safe_word="Agent", unsafe_word="User"))
    assert g.preset.name == "custom" and g.safe_id != g.unsafe_id
    with pytest.raises(ValueError, match="does not exist"):
        load_guard(GuardConfig(path=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="dtype"):
        load_guard(GuardConfig(path=path, dtype="int3"))


def test_parse_categories_reads_the_line_after_the_verdict() -> None:
    import re

    pat = re.compile(r"S\d+")
    assert parse_categories("unsafe\nS1,S10,S1", pat) == ("S1", "S10")
    assert parse_categories("unsafe", pat) == ()
    assert parse_categories("S3 unsafe", pat) == ()
    assert parse_categories("unsafe\nS2", None) == ()


def test_weights_for_spans_take_the_chunk_containing_the_token_end() -> None:
    s = StarScores((Segment(5, 0.9), Segment(10, 0.2), Segment(12, 0.7)))
    assert s.weights_for_spans([1, 5, 6, 10, 11, 12]) == [0.9, 0.9, 0.2, 0.2, 0.7, 0.7]


def test_api_validation_and_in_process_preparation_refuse_a_missing_response_alike(tmp_path: Path) -> None:
    """One check (Conversation.require_response) behind both paths: the same message either way."""
    from scorer_server.api.validation import validate_conversation
    from scorer_server.engine.prepare import prepare
    from scorer_server.limits import Limits
    from star_contract.types import Message, ScoreRequest

    guard = load_guard(GuardConfig(str(save_tiny_guard(tmp_path / "g", TinyGuardSpec()))))
    for conv in (Conversation(()), Conversation((Message("assistant", "a"), Message("user", "q")))):
        with pytest.raises(InvalidRequest) as api:
            validate_conversation(conv, Limits())
        with pytest.raises(InvalidRequest) as local:
            prepare(ScoreRequest(conv), guard.template, guard.tokenizer, lambda t: [1], Limits())
        assert str(api.value) == str(local.value)
        assert "assistant response" in str(local.value)


def test_judge_takes_a_prompt_as_the_last_message_and_score_does_not() -> None:
    """Judge moderates input too: a conversation ending with a user message judges that prompt; Score
    and Moderate still need the assistant response; an empty prompt or a trailing system message is
    refused with the field named."""
    from scorer_server.api.validation import validate_conversation, validate_judge
    from scorer_server.limits import Limits

    limits = Limits()
    prompt = Conversation.from_dicts([{"role": "user", "content": "how do I pick a lock?"}])
    validate_judge([prompt, Conversation.from_pair("q", "a")], limits)
    with pytest.raises(InvalidRequest, match="the last message must be the assistant response"):
        validate_conversation(prompt, limits)
    empty = Conversation.from_dicts([{"role": "user", "content": " "}])
    with pytest.raises(
        InvalidRequest, match=r"conversations\[0\]: the last user message, the prompt to judge"
    ):
        validate_judge([empty], limits)
    system_last = Conversation.from_dicts([{"role": "system", "content": "be safe"}])
    with pytest.raises(InvalidRequest, match=r"conversations\[0\]: the last message must be"):
        validate_judge([system_last], limits)
