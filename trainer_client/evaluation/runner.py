"""Evaluating one chat model: harmful rate (guard Judge), keyword-refusal rate and task accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from star_contract.types import Conversation
from trainer_client.evaluation.loaders import BenignItem, HarmfulPrompt
from trainer_client.generation import GenerationConfig, generate_responses
from trainer_client.judges import Judge
from trainer_client.refusal import is_refusal

"""Whole-response verdicts for (prompt, response) conversations: a scorer client's or engine's `judge`."""


@dataclass(frozen=True)
class EvalConfig:
    """How a model is evaluated."""

    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=128))
    """Conversations per Judge call."""


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation measured. Rates and accuracies are fractions in [0, 1]."""

    harmful_rate: float | None
    """Share of harmful-prompt responses the Judge calls unsafe (None without a judge or prompts)."""
    refusal_rate: float | None
    """Share of harmful-prompt responses with a refusal phrase."""
    accuracy: dict[str, float]
    """Per task: share of benign items whose response contains the expected answer."""
    n_harmful: int
    n_benign: dict[str, int]
    harmful_responses: tuple[tuple[str, str, bool | None], ...] = ()
    """(prompt, response, judged unsafe) for each harmful prompt."""
    benign_responses: tuple[tuple[str, str, str, bool], ...] = ()
    """(task, prompt, response, correct) for each benign item."""

    def summary(self) -> dict[str, Any]:
        """The numbers only (no responses), JSON-ready."""
        return {
            "harmful_rate": self.harmful_rate,
            "refusal_rate": self.refusal_rate,
            "accuracy": self.accuracy,
            "n_harmful": self.n_harmful,
            "n_benign": self.n_benign,
        }


def _norm(text: str) -> str:
    return " " + " ".join(text.lower().split()) + " "


def is_correct(response: str, answer: str) -> bool:
    """The response contains the answer phrase as whole words (case and spacing ignored)."""
    return _norm(answer) in _norm(response)


def evaluate(
    model: Any,
    tokenizer: Any,
    harmful: Sequence[HarmfulPrompt],
    benign: Sequence[BenignItem],
    judge: Judge | None,
    config: EvalConfig | None = None,
) -> EvalResult:
    """Greedy responses to every prompt, then the three measurements. The Judge sees the user prompt
    and the response (no system prompt)."""
    cfg = config or EvalConfig()
    prompts = [h.prompt for h in harmful] + [b.prompt for b in benign]
    responses = generate_responses(model, tokenizer, prompts, cfg.generation) if prompts else []
    harm_resp, benign_resp = responses[: len(harmful)], responses[len(harmful) :]
    flags: list[bool] | None = None
    if judge is not None and harmful:
        convs = [Conversation.from_pair(h.prompt, r) for h, r in zip(harmful, harm_resp, strict=True)]
        flags = judge.unsafe(convs)
    refusals = [is_refusal(r) for r in harm_resp]
    correct = [is_correct(r, b.answer) for b, r in zip(benign, benign_resp, strict=True)]
    tasks: dict[str, list[bool]] = {}
    for b, ok in zip(benign, correct, strict=True):
        tasks.setdefault(b.task, []).append(ok)
    return EvalResult(
        harmful_rate=sum(flags) / len(flags) if flags else None,
        refusal_rate=(sum(refusals) / len(refusals)) if refusals else None,
        accuracy={t: sum(v) / len(v) for t, v in tasks.items()},
        n_harmful=len(harmful),
        n_benign={t: len(v) for t, v in tasks.items()},
        harmful_responses=tuple(
            (h.prompt, r, None if flags is None else flags[i])
            for i, (h, r) in enumerate(zip(harmful, harm_resp, strict=True))
        ),
        benign_responses=tuple(
            (b.task, b.prompt, r, ok) for b, r, ok in zip(benign, benign_resp, correct, strict=True)
        ),
    )
