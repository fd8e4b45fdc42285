"""How every command-line tool of the project ends on a user's mistake: one line, exit code 2.

`PROG: error: MESSAGE` on stderr, never a traceback; the message is folded onto one line (transformers
and OS errors often span several).
"""

from __future__ import annotations

import sys

import jinja2

from star_contract.errors import StarError

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, StarError, jinja2.TemplateError)
"""What a bad flag, path, model directory, template or unreachable server raises."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type when it has none)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def fail(prog: str, exc: BaseException, code: int = 2) -> int:
    """Print `prog: error: ...` for `exc` and return the exit code."""
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return code


RUN_ERRORS: tuple[type[BaseException], ...] = (*USER_ERRORS, RuntimeError)
"""USER_ERRORS plus the RuntimeErrors that loading a model or generating with it raise on bad input."""
