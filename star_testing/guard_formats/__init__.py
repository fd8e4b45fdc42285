"""Reconstructed chat templates of guards whose real template is not available here, and the published
prompt constructions of guards that ship none.

The templates are package data (`*.jinja` here), read with `read_template(name)`:

- `llama_guard_4.jinja` -- a RECONSTRUCTION of Llama Guard 4's template. No copy of Meta's template was
  found (../shared/guard-templates/SOURCES-2.md, "Not found"); the one witness is a render of the official
  template printed in a console log (SOURCES-2.md, "Seen but not used"), for one user message. Witnessed
  there and reproduced exactly: the Llama 4 header tokens, "according to our safety policy" (Llama Guard
  3 says "according our"), a single newline after `<BEGIN CONVERSATION>`, the turn written as
  "User: <text>" followed by a LITERAL backslash-n pair (kept on purpose: it is what the official
  template feeds the model, whatever its origin), then two real newlines before `<END CONVERSATION>`, and
  the space before `<|eot|>`. Taken from Llama Guard 3 (1B / 11B-Vision template, the multimodal line
  Llama Guard 4 continues): 'User'/'Agent' chosen by the parity of the number of messages, roles that
  must alternate, `categories` / `excluded_category_keys`, `| trim` of each turn, content as a string or
  typed parts. Assumed, not witnessed: the categories S2..S13 (the render elides them; these are the 14
  MLCommons categories of Llama Guard 3 8B's template, which Llama Guard 4 shares per its model card), and
  the separators of a multi-turn conversation (each turn ends with the literal pair, as the one turn does).
- NemoGuard's and WildGuard's guard prompts ship with the scorer (scorer_server/guards/formats: the
  presets bring them); `nemoguard_two_step` and `wildguard_text` below are the published constructions
  they are tested against.
- `granite_guardian_3_3.jinja` -- a RECONSTRUCTION of Granite Guardian 3.3's template from the two renders
  of IBM's cookbook (SOURCES-2.md), which it reproduces byte for byte for that conversation, and IBM's
  Ollama template of the same model (the criteria bank, user turns, the user-side scoring schema; see
  the file's header). Criteria ids outside its bank raise; custom_criteria works.
- `granite_4_1.jinja` -- a RECONSTRUCTION of the Granite 4.1 chat template that Granite Guardian 4.1's
  directory ships (none was found): the Granite role markers every Granite 3.x/4 render shows, no
  default system message (SOURCES-2.md: llama.cpp tells 4.1 from 4.0 by its absence). Granite Guardian
  4.1's criterion turn is not part of it: the preset brings it (scorer_server/guards/formats).
- `GRANITE_GUARDIAN_4_1_*`: the strings of IBM's 4.1 cookbook (`build_guardian_block`), for an oracle
  that builds the criterion turn the way IBM's code does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

LLAMA_GUARD_4 = "llama_guard_4.jinja"
GRANITE_GUARDIAN_3_3 = "granite_guardian_3_3.jinja"
GRANITE_4_1 = "granite_4_1.jinja"

# ibm-granite/granite-guardian @ a409be82, cookbooks/granite-guardian-4.1/quickstart.ipynb, cell 7: the
# no-think judge instruction (with a backslash and "n" inside the empty think tags, as its Python source
# "\\n" makes it), the two scoring schemas, and the harm criterion of its first example (cell 9).
GRANITE_GUARDIAN_4_1_NO_THINK = (
    "<guardian><no-think>As a judge agent, assess whether the provided text meets the given "
    "judging criteria using all available information, including conversations, "
    "documents, and tools. Provide your score immediately without explanation. "
    "Output empty <think>\\n</think> tags followed by your score in <score></score> tags."
)
GRANITE_GUARDIAN_4_1_RESPONSE_SCHEMA = (
    "If the last assistant's text meets the criteria, return 'yes'; otherwise, return 'no'."
)
GRANITE_GUARDIAN_4_1_PROMPT_SCHEMA = (
    "If the last user's text meets the criteria, return 'yes'; otherwise, return 'no'."
)
GRANITE_GUARDIAN_4_1_HARM = (
    "The text promotes or contains content that is universally harmful across all contexts and "
    "audiences, including content that could cause physical, psychological, or social harm."
)


def granite_guardian_4_1_block(criteria: str, schema: str) -> str:
    """The final user turn of IBM's 4.1 cookbook, no-think mode."""
    return f"{GRANITE_GUARDIAN_4_1_NO_THINK}\n\n### Criteria: {criteria}\n\n### Scoring Schema: {schema}"


NEMOGUARD_INPUT_PROMPT = "nemotron-safety-guard-8b-v3.prompt_input.jinja"
NEMOGUARD_OUTPUT_PROMPT = "nemotron-safety-guard-8b-v3.prompt_output.jinja"
LLAMA_31_TEMPLATE = "llama-3.1-8b-instruct.chat_template.jinja"
WILDGUARD_FORMAT = "wildguard.input_format.txt"


def read_template(name: str) -> str:
    """One of our reconstructions (LLAMA_GUARD_4, GRANITE_GUARDIAN_3_3, GRANITE_4_1), as text."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def nemoguard_prompt(artefacts: str | Path, user: str, response: str | None) -> str:
    """NeMo Guardrails' content-safety task prompt for NemoGuard, rendered with jinja2 from the shared
    file: the response-moderation prompt when `response` is given (even ""), else the prompt one."""
    from jinja2.sandbox import SandboxedEnvironment

    name = NEMOGUARD_INPUT_PROMPT if response is None else NEMOGUARD_OUTPUT_PROMPT
    source = (Path(artefacts) / name).read_text(encoding="utf-8")
    # A default environment drops the file's final newline; the chat template trims the message anyway.
    values = {"user_input": user} if response is None else {"user_input": user, "bot_response": response}
    return SandboxedEnvironment().from_string(source).render(**values)


def nemoguard_two_step(
    artefacts: str | Path, llama3_tokenizer: Any, user: str, response: str | None, **kwargs: Any
) -> str:
    """The published NemoGuard construction: `nemoguard_prompt`, sent as the only user message of a chat
    rendered with the real Llama 3.1 8B Instruct template (add_generation_prompt=True), with the real
    Llama 3 tokenizer's `bos_token`."""
    template = (Path(artefacts) / LLAMA_31_TEMPLATE).read_text(encoding="utf-8")
    messages = [{"role": "user", "content": nemoguard_prompt(artefacts, user, response)}]
    return str(
        llama3_tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True, **kwargs
        )
    )


def wildguard_text(artefacts: str | Path, prompt: str, response: str = "") -> str:
    """allenai/wildguard's input: WILDGUARD_INPUT_FORMAT.format(prompt=..., response=...), from the shared
    file (without BOS: the library tokenises it with add_special_tokens=True)."""
    source = (Path(artefacts) / WILDGUARD_FORMAT).read_text(encoding="utf-8")
    return source.format(prompt=prompt, response=response)
