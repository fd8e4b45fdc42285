"""Round 2's guard directories (star_testing.real_guards.save_real_guard_2) and where their verdicts sit.

Each directory (Qwen3Guard-Gen, Llama Guard 4, NemoGuard, WildGuard) holds the guard's real tokenizer,
its chat template (real, ours, or reconstructed: see RealGuard2.origin) and a tiny random model with the
tokenizer's full vocabulary; Granite Guardian 3.3's holds a stand-in tokenizer (no token ids checked).
The checks: it loads with AutoTokenizer / AutoModelForCausalLM, renders a plain conversation, the model
scores the whole vocabulary, and -- what the scorer's verdict specs are built from -- the exact token ids,
in context, at the end of the rendered prompt, of the text the guard writes before its verdict, and of
the verdict words' first tokens (compared with the words alone).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from scorer_server.guards.formats import read_format
from star_testing.real_guards import (
    REAL_GUARDS_2,
    RealGuard2,
    guard_template,
    real_tokenizer,
)

pytestmark = pytest.mark.usefixtures("guard_templates")

PROMPT = "how do I make a bomb?"
RESPONSE = "I can't help with that."
REAL = [g.name for g in REAL_GUARDS_2 if g.tokenizer_is_real]
ALL = [g.name for g in REAL_GUARDS_2]
KWARGS: dict[str, dict[str, Any]] = {
    "granite-guardian-3.3": {
        "guardian_config": {"criteria_id": "groundedness"},
        "documents": [{"doc_id": "0", "text": "Bombs are not discussed here."}],
    }
}


@dataclass(frozen=True)
class Expected:
    """Token ids, tokenised as part of the whole text (rendered prompt + what the guard writes)."""

    end: list[int]
    """The last ids of the rendered prompt (user-only conversation; the same with a response)."""
    prefix: list[int]
    """The guard's text before its first verdict word."""
    safe: int
    unsafe: int
    response_prefix: list[int]
    """Its text before the verdict on the response (RealGuard2.response_prefix)."""
    alone_differs: tuple[str, ...] = ()
    """Verdict words whose first token alone (add_special_tokens=False) differs from the one in context."""


EXPECTED = {
    "qwen3guard-gen": Expected(
        # <|im_end|> \n <|im_start|> assistant \n <think> \n\n </think> \n\n
        end=[151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271],
        prefix=[73037, 25],  # "Safety", ":"
        safe=22291,  # " Safe"
        unsafe=73067,  # " Unsafe"
        response_prefix=[73037, 25],
    ),
    "llama-guard-4": Expected(
        # "." " " <|eot|> <|header_start|> assistant <|header_end|>
        end=[26, 220, 200008, 200005, 140680, 200006],
        prefix=[368],  # "\n\n"
        safe=60411,  # "safe"
        unsafe=72110,  # "unsafe"
        response_prefix=[368],
    ),
    "nemoguard": Expected(
        # "Output" " JSON" ":" <|eot_id|> <|start_header_id|> assistant <|end_header_id|> "\n\n"
        end=[5207, 4823, 25, 128009, 128006, 78191, 128007, 271],
        prefix=[5018, 1502, 19220, 794, 330],  # '{"' "User" " Safety" '":' ' "'
        safe=19193,  # "safe"
        unsafe=39257,  # "unsafe"
        # ... "safe" '",' ' "' "Response" " Safety" '":' ' "'
        response_prefix=[5018, 1502, 19220, 794, 330, 19193, 498, 330, 2647, 19220, 794, 330],
    ),
    "wildguard": Expected(
        # "Answers:" -> ... ":" "▁" [/INST] "▁" "\n" "<" "|" "ass" "istant" "|" ">" "\n"
        end=[29515, 29473, 4, 29473, 781, 29557, 29534, 1257, 11911, 29534, 29535, 781],
        prefix=[29537, 2553, 1775, 2927, 29515],  # "H" "arm" "ful" "▁request" ":" (no "▁" after "\n")
        safe=1476,  # "▁no"
        unsafe=5849,  # "▁yes"
        # ... "▁no" "\n" "Response" "▁ref" "usal" ":" "▁no" "\n" "H" "arm" "ful" "▁response" ":"
        response_prefix=[29537, 2553, 1775, 2927, 29515, 1476, 781, 3731, 2560, 14164, 29515, 1476, 781,
                         29537, 2553, 1775, 3667, 29515],
        # alone, " no" / " yes" give "▁" (29473) first: SentencePiece's dummy prefix before the space
        alone_differs=(" no", " yes"),
    ),
}  # fmt: skip


@dataclass
class Built:
    guard: RealGuard2
    path: Path
    seconds: float
    tok: Any
    model: Any


@pytest.fixture(scope="module")
def built(real_guard_2_dir: Any) -> Iterator[dict[str, Built]]:
    """Every directory (shared with tests/test_todays_guards.py: `seconds` is the build time when this
    module built it, tokenizer conversions included, else about 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out: dict[str, Built] = {}
    for guard in REAL_GUARDS_2:
        start = time.perf_counter()
        path = real_guard_2_dir(guard.name)
        info = guard
        seconds = time.perf_counter() - start
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
        out[guard.name] = Built(info, path, seconds, tok, model)
    yield out


def render(b: Built, response: str | None) -> str:
    conv = [{"role": "user", "content": PROMPT}]
    if response is not None:
        conv.append({"role": "assistant", "content": response})
    kwargs = KWARGS.get(b.guard.name, {})
    # NemoGuard's directory ships the general Llama 3.1 template and WildGuard's none: their guard prompts
    # come with the scorer's presets
    prompt = {"nemoguard": "nemoguard.jinja", "wildguard": "wildguard.jinja"}.get(b.guard.name)
    if prompt is not None:
        kwargs = {**kwargs, "chat_template": read_format(prompt)}
    return str(b.tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True, **kwargs))


def ids(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def test_every_guard_has_expectations() -> None:
    assert sorted(EXPECTED) == sorted(REAL)
    assert len(REAL) == 4 and len(ALL) == 6


ARCH = {
    "qwen3": "Qwen3ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "granite": "GraniteForCausalLM",
}


@pytest.mark.parametrize("name", ALL)
def test_directory_loads_renders_and_scores_the_full_vocab(
    built: dict[str, Built], name: str, guard_templates: Path, record_property: Any
) -> None:
    b = built[name]
    record_property("build_seconds", round(b.seconds, 2))
    assert type(b.model).__name__ == ARCH[b.guard.architecture]
    assert b.model.config.vocab_size == len(b.tok)
    if b.guard.tokenizer_is_real:
        assert len(b.tok) == len(real_tokenizer(b.guard.tokenizer, guard_templates))
    assert b.model.config.hidden_size == 64 and b.model.config.num_hidden_layers == 2
    assert b.model.config.eos_token_id == b.tok.eos_token_id is not None
    for response in (None, RESPONSE):
        text = render(b, response)
        assert PROMPT in text and (response is None or response in text)
        with torch.inference_mode():
            logits = b.model(input_ids=torch.tensor([ids(b.tok, text)]), logits_to_keep=1).logits
        assert logits.shape == (1, 1, len(b.tok)) and torch.isfinite(logits).all()
    assert sum(f.stat().st_size for f in b.path.iterdir()) < 160e6


@pytest.mark.parametrize("name", REAL)
def test_saved_tokenizer_is_the_real_one(built: dict[str, Built], name: str, guard_templates: Path) -> None:
    b = built[name]
    fresh = real_tokenizer(b.guard.tokenizer, guard_templates)
    text = render(b, "Voilà — señor Müller's 日本語 🙂 {'x': 1}\n\n\tend ") + "Safety: Unsafe\nS1 yes no"
    assert ids(b.tok, text) == ids(fresh, text)
    assert b.tok.chat_template == guard_template(b.guard, guard_templates)


@pytest.mark.parametrize("name", REAL)
def test_verdict_tokens_in_context(built: dict[str, Built], name: str) -> None:
    """(a) the end of the rendered prompt, (b) the forced text before the verdict and the verdict words'
    first tokens, all tokenised as one text; the prompt's ids are a prefix of the whole text's ids."""
    b, want = built[name], EXPECTED[name]
    cases = (
        (None, b.guard.verdict_prefix, want.prefix),
        (RESPONSE, b.guard.response_prefix, want.response_prefix),
    )
    for response, forced, prefix_ids in cases:
        prompt = render(b, response)
        base = ids(b.tok, prompt)
        assert base[-len(want.end) :] == want.end
        for word, expected in ((b.guard.safe_word, want.safe), (b.guard.unsafe_word, want.unsafe)):
            whole = ids(b.tok, prompt + forced + word)
            assert whole[: len(base)] == base, "the forced text merges with the prompt"
            assert whole[len(base) :] == [*prefix_ids, expected], b.tok.convert_ids_to_tokens(
                whole[len(base) :]
            )
            alone = ids(b.tok, word)[0]
            assert (alone != expected) == (word in want.alone_differs), (word, alone)


def test_qwen3guard_controversial(built: dict[str, Built]) -> None:
    b = built["qwen3guard-gen"]
    prompt = render(b, None)
    base = ids(b.tok, prompt + "Safety:")
    assert ids(b.tok, prompt + "Safety: Controversial")[len(base)] == 2093  # " Cont"
    assert ids(b.tok, " Controversial")[0] == 2093


def test_nemoguard_unsafe_prompt_verdict_then_response(built: dict[str, Built]) -> None:
    b = built["nemoguard"]
    prompt = render(b, RESPONSE)
    base = ids(b.tok, prompt)
    whole = ids(b.tok, prompt + '{"User Safety": "unsafe", "Response Safety": "safe"}')
    # '{"' "User" " Safety" '":' ' "' "unsafe" '",' ' "' "Response" " Safety" '":' ' "' "safe" '"}'
    user, response = [5018, 1502, 19220, 794, 330, 39257], [498, 330, 2647, 19220, 794, 330, 19193, 9388]
    assert whole[len(base) :] == user + response


def test_wildguard_refusal_line(built: dict[str, Built]) -> None:
    b = built["wildguard"]
    prompt = render(b, RESPONSE)
    base = ids(b.tok, prompt + "Harmful request: no\nResponse refusal:")
    for word, expected in ((" yes", 5849), (" no", 1476)):
        assert ids(b.tok, prompt + "Harmful request: no\nResponse refusal:" + word)[len(base)] == expected
