"""Rendering a guard's own chat template on (possibly truncated) conversations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scorer_server.errors import TemplateRenderError
from star_contract.content import (
    SENTINEL,
    ContentForm,
    describe_template_error,
    detect_content_form,
    shape_messages,
)
from star_contract.types import Conversation

__all__ = ["SENTINEL", "GuardTemplate", "TemplateSplit", "auto_verdict_prefix"]


@dataclass(frozen=True)
class TemplateSplit:
    """The rendered guard prompt around the last assistant message."""

    head: str
    """Everything before the response: policy, earlier turns, role labels."""
    suffix: str
    """Everything after the response: instructions, the assistant header, the verdict prefix."""


class GuardTemplate:
    """Renders the guard prompt for a conversation whose last assistant message is cut at `c`.

    `render(conv, c)` is the definition the STAR score is taken against: the guard's template applied
    to [..., assistant: response[:c]] (content in the form the template reads), followed by the text
    the guard writes before its verdict.
    """

    def __init__(
        self,
        tokenizer: Any,
        template: str | None,
        kwargs: dict[str, Any],
        verdict_prefix: str,
        content_form: ContentForm | None = None,
        closing_turn: str | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._template = template
        self._kwargs = dict(kwargs)
        self.verdict_prefix = verdict_prefix
        self._closing = _compile(closing_turn) if closing_turn else None
        self.content_form = content_form or detect_content_form(self._apply, _probe_messages())

    def _apply(self, messages: list[dict[str, Any]]) -> str:
        if self._closing is not None:
            messages = [*messages, self._closing_message(messages)]
        text = self._tokenizer.apply_chat_template(
            messages,
            chat_template=self._template,
            tokenize=False,
            add_generation_prompt=True,
            **self._kwargs,
        )
        if not isinstance(text, str):
            raise TypeError("chat template did not render to text")
        return text

    def _closing_message(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The preset's final user turn, in the form the conversation's content has."""
        assert self._closing is not None
        roles = [{"role": m["role"]} for m in messages]
        text = self._closing.render(messages=roles, **self._kwargs)
        content = messages[-1]["content"] if messages else ""
        if isinstance(content, list):
            return {"role": "user", "content": [{"type": "text", "text": text}]}
        return {"role": "user", "content": text}

    def render_messages(self, messages: list[dict[str, str]]) -> str:
        """The guard prompt for plain {role, content} messages; a template that refuses them raises
        TemplateRenderError (the request's fault, INVALID_ARGUMENT to a caller)."""
        try:
            text = self._apply(shape_messages(messages, self.content_form))
        except Exception as exc:  # templates raise TemplateError, UndefinedError, TypeError, ...
            raise TemplateRenderError(
                "the guard's " + describe_template_error(exc).removeprefix("the ")
            ) from None
        return text + self.verdict_prefix

    def render(self, conv: Conversation, cut: int | None = None) -> str:
        msgs = conv.to_dicts()
        if cut is not None:
            msgs[-1] = {"role": msgs[-1]["role"], "content": conv.response[:cut]}
        return self.render_messages(msgs)

    def split(self, conv: Conversation) -> TemplateSplit:
        """Render with a sentinel in place of the response and split around it."""
        msgs = conv.to_dicts()
        msgs[-1] = {"role": msgs[-1]["role"], "content": SENTINEL}
        text = self.render_messages(msgs)
        if text.count(SENTINEL) != 1:
            raise TemplateRenderError(
                "the guard's chat template must contain the last assistant message exactly once; "
                f"found it {text.count(SENTINEL)} times"
            )
        head, suffix = text.split(SENTINEL)
        return TemplateSplit(head=head, suffix=suffix)


def _compile(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment().from_string(source)


def _probe_messages() -> list[dict[str, str]]:
    return [
        {"role": "user", "content": "How do I bake bread?"},
        {"role": "assistant", "content": SENTINEL},
    ]


def auto_verdict_prefix(rendered: str) -> str:
    """What the guard writes before its verdict word, judged from the rendered prompt.

    Llama 3 headers end in `<|end_header_id|>` and Llama 4's in `<|header_end|>`; the model then writes
    "\\n\\n" first. A template that already ends with the blank line needs nothing.
    """
    if rendered.endswith(("<|end_header_id|>", "<|header_end|>")):
        return "\n\n"
    return ""
