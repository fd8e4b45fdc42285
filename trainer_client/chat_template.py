"""The trainee's chat template: rendering in the content form it reads, and where each assistant
message's text lands in the rendered conversation.

Real chat templates change what they are given: Llama 3.x applies `| trim` to every message, and
multimodal-era templates read content as typed parts. Labels and STAR cuts are therefore located in
the text the template actually renders, not in the raw message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from star_contract.content import SENTINEL, ContentForm, detect_content_form, shape_messages


@dataclass(frozen=True)
class RenderedTurn:
    """Where one assistant message sits in the rendered conversation up to and including it."""

    prefix_len: int
    """Length of the rendering of the earlier turns plus the generation prompt (labels start here)."""
    upto: str
    """The rendering of the conversation up to and including this message."""
    content_start: int
    """Offset in `upto` where the rendered content begins."""
    content: str
    """The content as rendered (e.g. trimmed): what the trainee learns and the guard scores."""


class TraineeTemplate:
    """Renders a trainee tokenizer's chat template; the content form is decided on first use."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._form: ContentForm | None = None

    @property
    def content_form(self) -> ContentForm:
        if self._form is None:
            probe = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": SENTINEL}]
            self._form = detect_content_form(
                lambda msgs: self._apply(msgs, gen=False), probe, flag_hint="the chat template's kwargs"
            )
        return self._form

    def _apply(self, messages: list[dict[str, Any]], gen: bool) -> str:
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen))

    def render(self, messages: list[dict[str, str]], gen: bool) -> str:
        return self._apply(shape_messages(messages, self.content_form), gen)

    def locate(self, messages: list[dict[str, str]], i: int) -> RenderedTurn:
        """Find assistant message `i` in the rendering of `messages[: i + 1]`.

        Raises ValueError when the template does not render earlier turns as a prefix, or changes the
        content beyond trimming whitespace (then labels cannot be located)."""
        prefix = self.render(messages[:i], gen=True)
        upto = self.render(messages[: i + 1], gen=False)
        marked = self.render([*messages[:i], {**messages[i], "content": SENTINEL}], gen=False)
        before, sep, after = marked.partition(SENTINEL)
        end = len(upto) - len(after)
        if not (sep and upto.startswith(prefix) and upto.startswith(before) and upto.endswith(after)):
            raise ValueError(
                "the trainee's chat template does not render earlier turns as a prefix of the whole "
                "conversation, so assistant tokens cannot be located"
            )
        shown = upto[len(before) : end] if end >= len(before) else ""
        if shown not in messages[i]["content"]:
            raise ValueError(
                "the trainee's chat template changes assistant content beyond trimming whitespace, so "
                "STAR cuts cannot be mapped onto its tokens"
            )
        return RenderedTurn(len(prefix), upto, len(before), shown)
