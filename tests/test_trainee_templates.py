"""Trainee chat templates as users have them: Llama 3.x trims message content, multimodal-era templates
read typed parts. Labels, token ends and the guard's request must follow the text the template
renders. The tokenizer is the real Llama 3 one (converted from ../shared); the templates below are ours,
written with the same constructs as the real ones they stand for (Llama 3.1 Instruct's
`message['content'] | trim`, Llama 3.2 Vision's loop over typed parts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from star_contract.content import ContentForm
from star_contract.types import Conversation
from star_testing.real_guards import llama3_tokenizer
from trainer_client.chat_template import TraineeTemplate
from trainer_client.data import build_examples, tokenize_conversation

HEADER = "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
TRIM = (
    "{{- bos_token }}{% for message in messages %}"
    "{{- " + HEADER + " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
PARTS = (
    "{{- bos_token }}{% for message in messages %}{{- " + HEADER + " }}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{- part['text'] }}"
    "{% endfor %}{{- '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
SHOUT = TRIM.replace("| trim", "| upper")

CONVERSATIONS = [
    Conversation.from_pair("How do I bake bread?", " Sure! Mix flour and water, then bake.\n"),
    Conversation.from_pair("  Spaces around  ", "\n\n  Knead it — ten minutes; rest it. 🙂  "),
    Conversation.from_pair("Say nothing.", "   "),
    Conversation.from_dicts(
        [
            {"role": "system", "content": " You are terse. "},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": " Hello.\n"},
            {"role": "user", "content": "Recipe?"},
            {"role": "assistant", "content": "\tFlour, water, salt, yeast.  "},
        ]
    ),
]


@pytest.fixture(scope="module")
def real_tokenizer(guard_templates: Path) -> Any:
    # No stand-in without ../shared: a small byte-level BPE splits characters such as "—" over several
    # tokens, which the per-token offset checks below cannot follow (they failed with it). Skipped
    # without the shared folder, failed without it in CI (conftest's guard_templates).
    return llama3_tokenizer(guard_templates / "llama3.tokenizer.model")


def _with(tokenizer: Any, template: str) -> Any:
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template", [TRIM, PARTS], ids=["trim", "typed-parts"])
def test_labels_and_requests_follow_the_rendered_content(real_tokenizer: Any, template: str) -> None:
    tok = _with(real_tokenizer, template)
    examples = build_examples(tok, CONVERSATIONS, all_turns=True, words_per_chunk=2)
    assert len(examples) == len(CONVERSATIONS)  # an all-whitespace answer still labels its end of turn
    for ex in examples:
        assistant = [m.content for m in ex.conversation.messages if m.role == "assistant"]
        shown = [a.strip() for a in assistant] if template == TRIM else assistant
        for turn, text in zip(ex.turns, shown[-len(ex.turns) :], strict=True):
            # the guard scores what the trainee learns
            assert turn.request.conversation.response == text
            decoded = tok.decode([ex.input_ids[p] for p in turn.positions])
            assert decoded.endswith(text + "<|eot_id|>")
            # a first token may straddle the header's "\n\n" and the content (BPE merges newlines)
            header = decoded[: len(decoded) - len(text + "<|eot_id|>")]
            assert header in ("", "\n\n"), header
            # each label token's end offset cuts the rendered text where the decoded tokens end
            for k, end in enumerate(turn.token_ends):
                so_far = tok.decode([ex.input_ids[p] for p in turn.positions[: k + 1]])
                assert text[:end] == so_far[len(header) :].removesuffix("<|eot_id|>")[: len(text)]
            cuts = turn.request.cuts.offsets
            if text:
                assert cuts and cuts[-1] == len(text) and all(0 < c <= len(text) for c in cuts)
            else:  # an empty response is scored at its one cut, offset 0
                assert cuts == ()


def test_content_form_is_detected(real_tokenizer: Any) -> None:
    assert TraineeTemplate(_with(real_tokenizer, PARTS)).content_form is ContentForm.PARTS
    assert TraineeTemplate(_with(real_tokenizer, TRIM)).content_form is ContentForm.TEXT


def test_a_template_that_rewrites_content_is_refused(real_tokenizer: Any) -> None:
    tok = _with(real_tokenizer, SHOUT)
    with pytest.raises(ValueError, match="beyond trimming whitespace"):
        tokenize_conversation(tok, CONVERSATIONS[0])
