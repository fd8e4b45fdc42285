"""How a chat template wants message content, and what a failed rendering means for the user.

Templates disagree about the shape of `message['content']`: most read a plain string, while Llama Guard
3 1B / 11B Vision, Llama Guard 4 and most multimodal-era templates read a list of typed parts
(`[{"type": "text", "text": ...}]`) and silently render nothing from a string. Which form a template
wants is decided once, by rendering a probe conversation both ways, and that form is used for every
later rendering (guard prompts, remote prompts, Judge, trainee templates).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from star_contract.errors import ConfigError

SENTINEL = "\u2063STAR\u2063RESPONSE\u2063"
"""Stands in for the response when a template is probed; no real text contains it."""


class ContentForm(StrEnum):
    """The shape of `message['content']` a chat template reads."""

    TEXT = "text"
    """A plain string."""
    PARTS = "parts"
    """A list of typed parts, `[{"type": "text", "text": ...}]`."""


def shape_messages(messages: list[dict[str, str]], form: ContentForm) -> list[dict[str, Any]]:
    """`messages` with every content in `form` (the input is not modified)."""
    if form is ContentForm.TEXT:
        return [dict(m) for m in messages]
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


def detect_content_form(
    render: Callable[[list[dict[str, Any]]], str],
    messages: list[dict[str, str]],
    flag_hint: str = "--template-kwargs",
) -> ContentForm:
    """The content form under which `render` shows the last message's content exactly once.

    `messages` is a probe whose last content is `SENTINEL`. Raises ConfigError that says why neither
    form works: a variable the template needs (and the flag that sets it), an exception the template
    raises, or how often the response appeared.
    """
    outcomes: dict[ContentForm, str | BaseException] = {}
    for form in (ContentForm.TEXT, ContentForm.PARTS):
        try:
            text = render(shape_messages(messages, form))
        except Exception as exc:  # a template may raise anything: UndefinedError, TypeError, ...
            outcomes[form] = exc
            continue
        if text.count(SENTINEL) == 1:
            return form
        outcomes[form] = text
    errors = [out for out in outcomes.values() if isinstance(out, BaseException)]
    errors.sort(key=lambda e: not _missing_variable(e))  # a missing variable explains the most
    if errors and (_missing_variable(errors[0]) or isinstance(outcomes[ContentForm.TEXT], BaseException)):
        raise ConfigError(describe_template_error(errors[0], flag_hint)) from None
    counts = {
        form: (out.count(SENTINEL) if isinstance(out, str) else f"an error ({type(out).__name__})")
        for form, out in outcomes.items()
    }
    raise ConfigError(
        "the chat template must render the last assistant message exactly once; it rendered it "
        f"{counts[ContentForm.TEXT]} times with string content and {counts[ContentForm.PARTS]} with "
        "typed-part content. Use a template that shows the response (--template-file)"
    )


_UNDEFINED = re.compile(r"^'(\w+)' is undefined$")


def _missing_variable(exc: BaseException) -> str | None:
    """The name of the undefined template variable `exc` complains about, if that is what it is."""
    import jinja2

    found = _UNDEFINED.match(str(exc).strip())
    return found.group(1) if isinstance(exc, jinja2.UndefinedError) and found else None


def describe_template_error(exc: BaseException, flag_hint: str = "--template-kwargs") -> str:
    """One sentence for a template failure: what went wrong and which setting changes it."""
    import jinja2

    message = str(exc).strip()
    name = _missing_variable(exc)
    if name:
        return (
            f"the chat template needs the variable {name!r}, which nothing sets; pass it with "
            f"{flag_hint} '{{\"{name}\": ...}}'"
        )
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"the chat template is not valid Jinja (line {exc.lineno}: {message})"
    if isinstance(exc, jinja2.TemplateError):
        return f"the chat template refused the conversation: {message}"
    return f"the chat template failed to render ({type(exc).__name__}: {message})"
