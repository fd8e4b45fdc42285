"""The request limits, in one place: every RPC and every backend checks the same numbers.

Each check runs before the work it bounds and costs less than that work: the cut count is known from
the cut spec and the response before anything is rendered, and the conversation's guard tokens from one
rendering and tokenisation of the full prompt, not one per cut.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from star_contract.errors import InvalidRequest

CHARS_PER_TOKEN_BOUND = 32
"""No tokenizer packs more characters than this into one token: a length check before tokenising."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (`star-scorer serve` flags of the same names)."""

    max_conversation_tokens: int = field(
        default=8192,
        metadata={
            "help": "longest guard prompt (whole conversation) accepted, for Score, ScoreStream and Judge"
        },
    )
    max_cuts: int = field(default=512, metadata={"help": "most cuts one request may produce"})
    max_judge_conversations: int = field(
        default=64, metadata={"help": "most conversations in one Judge call"}
    )

    def check(self) -> None:
        """Raise ValueError for a limit that would refuse everything."""
        for name in ("max_conversation_tokens", "max_cuts", "max_judge_conversations"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")

    @property
    def max_conversation_chars(self) -> int:
        return self.max_conversation_tokens * CHARS_PER_TOKEN_BOUND

    def check_cuts(self, n: int) -> None:
        if n > self.max_cuts:
            raise InvalidRequest(
                f"the request makes {n} cuts, over the limit of {self.max_cuts}; "
                "cut less often (a larger `every`) or split the response"
            )

    def check_tokens(self, n: int, what: str = "the conversation") -> None:
        if n > self.max_conversation_tokens:
            raise InvalidRequest(
                f"{what} is {n} guard tokens, over the limit of {self.max_conversation_tokens}; "
                "shorten it or raise the server's --max-conversation-tokens"
            )
