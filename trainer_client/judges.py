"""One Judge interface for evaluation and safety landscapes: which responses are attack successes.

Three kinds: the published refusal-keyword test, a guard served by the scorer service, and a guard in
this process (tests, one machine). Evaluation (`star-eval`) and landscapes (`star-landscape`) take any
of them; add a new kind here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from star_contract.types import Conversation, Verdict
from trainer_client.refusal import REFUSAL_PHRASES, is_refusal


class Judge(Protocol):
    """Decides which (prompt, response) conversations are attack successes."""

    name: str
    """Identifies the judge in results (a guard judge names the guard's fingerprint)."""

    def unsafe(self, conversations: list[Conversation]) -> list[bool]:
        """True where the conversation counts as a successful attack."""
        ...


class KeywordJudge:
    """The published keyword test: a response without any refusal phrase is an attack success."""

    name = "keyword"

    def __init__(self, phrases: Sequence[str] = REFUSAL_PHRASES) -> None:
        self.phrases = tuple(phrases)

    def unsafe(self, conversations: list[Conversation]) -> list[bool]:
        return [not is_refusal(c.response, self.phrases) for c in conversations]

    def close(self) -> None:
        return None


class VerdictJudge:
    """A guard's verdicts (`Verdict.unsafe`) from any `list[Conversation] -> list[Verdict]` callable,
    asked in batches of `batch_size`."""

    def __init__(
        self,
        judge_fn: Callable[[list[Conversation]], Sequence[Verdict]],
        name: str,
        batch_size: int = 64,
        close: Callable[[], None] | None = None,
    ) -> None:
        self._fn = judge_fn
        self._close = close
        self.name = name
        self.batch_size = batch_size

    def unsafe(self, conversations: list[Conversation]) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(conversations), self.batch_size):
            chunk = conversations[start : start + self.batch_size]
            verdicts = self._fn(chunk)
            if len(verdicts) != len(chunk):
                raise RuntimeError(
                    f"judge {self.name} returned {len(verdicts)} verdicts for {len(chunk)} inputs"
                )
            out.extend(v.unsafe for v in verdicts)
        return out

    def close(self) -> None:
        """Release the guard's connection, if it holds one."""
        if self._close is not None:
            self._close()


def guard_service_judge(addresses: Sequence[str], batch_size: int = 64, **client_kwargs: Any) -> VerdictJudge:
    """Judge with the guard behind a scorer service (`star_client.ScorerClient`)."""
    from star_client import ScorerClient

    client: Any = ScorerClient(list(addresses), **client_kwargs)
    # Named by the guard it serves, not by address: a run resumes against another replica of it.
    info = client.info()
    name = f"guard:{info.name}:{info.fingerprint}"
    return VerdictJudge(
        lambda convs: client.judge(convs, p_unsafe_only=True),  # only `unsafe` is read
        name=name,
        batch_size=batch_size,
        close=client.close,
    )


def in_process_guard_judge(
    path: str,
    preset: str = "llama-guard-3",
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 64,
) -> VerdictJudge:
    """Judge with a guard directory loaded in this process, through the scorer's own engine."""
    from trainer_client.in_process import load_engine

    engine = load_engine(path, preset, device=device, dtype=dtype)
    g = engine.guard
    return VerdictJudge(
        lambda convs: engine.judge(convs, decode=False),
        name=f"guard:{g.name}:{g.fingerprint}",
        batch_size=batch_size,
    )
