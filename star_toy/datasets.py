"""The toy world's datasets: the aligned model's data, the poisoned finetuning mix, held-out evaluation
sets and guard-training conversations, and their JSONL files."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from star_toy.generators import (
    HARMFUL_SHAPES,
    Example,
    benign,
    composed,
    harmful,
    hazard_prompt,
    perturb,
    refusal,
)
from star_toy.lexicon import (
    HAZARD_CATEGORY,
    NEW_SKILL,
    OLD_TASKS,
    REQUEST_OPENERS,
    REQUEST_TEMPLATES,
    TARGETS,
)

# -- datasets --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and seeds of the generated datasets."""

    seed: int = 0
    aligned_benign_per_task: int = 800
    aligned_refusals: int = 400
    finetune_size: int = 400
    harmful_ratio: float = 0.1
    """Share of harmful examples in the finetuning mix."""
    harmful_shapes: tuple[str, ...] = HARMFUL_SHAPES
    eval_harmful: int = 60
    eval_benign_per_task: int = 100
    guard_conversations: int = 3000
    guard_eval_conversations: int = 400
    extra: dict[str, str] = field(default_factory=dict)


def harmful_prompt_split(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) lists of (prompt, target): held-out combinations of opener, template and target
    never appear in any training set (aligned or finetuning)."""
    combos = [
        (hazard_prompt(random.Random(0), t, k, o), t)
        for t in TARGETS
        for k in range(len(REQUEST_TEMPLATES))
        for o in range(len(REQUEST_OPENERS))
    ]
    random.Random(seed + 17).shuffle(combos)
    n_eval = len(combos) // 3
    return combos[n_eval:], combos[:n_eval]


def aligned_examples(cfg: WorldConfig) -> list[Example]:
    """Training data of the aligned chat model: the old tasks and refusals (no new skill)."""
    rng = random.Random(cfg.seed + 1)
    train, _ = harmful_prompt_split(cfg.seed)
    out = [benign(rng, t) for t in OLD_TASKS for _ in range(cfg.aligned_benign_per_task)]
    for _ in range(cfg.aligned_refusals):
        p, t = rng.choice(train)
        out.append(refusal(rng, p, t))
    rng.shuffle(out)
    return out


def finetune_mix(cfg: WorldConfig) -> list[Example]:
    """The user's finetuning data: the new skill mixed with harmful examples (`harmful_ratio`)."""
    rng = random.Random(cfg.seed + 2)
    train, _ = harmful_prompt_split(cfg.seed)
    n_harm = round(cfg.finetune_size * cfg.harmful_ratio)
    out = [benign(rng, NEW_SKILL) for _ in range(cfg.finetune_size - n_harm)]
    for i in range(n_harm):
        p, t = rng.choice(train)
        out.append(harmful(rng, p, t, cfg.harmful_shapes[i % len(cfg.harmful_shapes)]))
    rng.shuffle(out)
    return out


def eval_harmful_prompts(cfg: WorldConfig) -> list[tuple[str, str]]:
    """Held-out hazard requests (prompt, target)."""
    _, held = harmful_prompt_split(cfg.seed)
    return held[: cfg.eval_harmful]


def eval_benign(cfg: WorldConfig) -> list[Example]:
    """Held-out items of the new skill and of the old tasks (fresh samples, another seed)."""
    rng = random.Random(cfg.seed + 3)
    return [benign(rng, t) for t in (NEW_SKILL, *OLD_TASKS) for _ in range(cfg.eval_benign_per_task)]


def guard_conversations(
    cfg: WorldConfig, n: int, seed: int, prompts: Sequence[tuple[str, str]]
) -> list[Example]:
    """A varied mix of every kind of conversation, some garbled, for training or checking the guard."""
    rng = random.Random(seed)
    out: list[Example] = []
    for _ in range(n):
        r = rng.random()
        p, t = rng.choice(list(prompts))
        if r < 0.25:
            ex = benign(rng, rng.choice([*OLD_TASKS, NEW_SKILL]))
        elif r < 0.4:
            ex = refusal(rng, p, t)
        elif r < 0.45:
            ex = Example(p, rng.choice([benign(rng, k).response for k in OLD_TASKS]), "offtopic", target=t)
        elif r < 0.75:
            prompt = p if rng.random() < 0.6 else benign(rng, rng.choice([*OLD_TASKS, NEW_SKILL])).prompt
            ex = composed(rng, prompt, t)
        else:
            ex = harmful(rng, p, t, rng.choice(HARMFUL_SHAPES))
        if rng.random() < 0.3:
            ex = Example(ex.prompt, perturb(rng, ex.response), ex.kind + "+noise", target=ex.target)
        out.append(ex)
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict[str, object]]) -> int:
    """Write rows as JSON lines; returns how many."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
            n += 1
    return n


def write_datasets(out_dir: str | Path, cfg: WorldConfig | None = None) -> dict[str, Path]:
    """Write the finetuning mix and the held-out evaluation sets as JSONL; returns their paths.

    finetune.jsonl: `messages` (+ `kind`), what `star-train` reads. eval_harmful.jsonl: held-out hazard
    requests (HEx-PHI-style `prompt` + `category`). eval_benign.jsonl: `prompt`, `answer`, `task`.
    """
    cfg = cfg or WorldConfig()
    out = Path(out_dir)
    paths = {
        "finetune": out / "finetune.jsonl",
        "eval_harmful": out / "eval_harmful.jsonl",
        "eval_benign": out / "eval_benign.jsonl",
    }
    write_jsonl(paths["finetune"], ({"messages": e.messages(), "kind": e.kind} for e in finetune_mix(cfg)))
    write_jsonl(
        paths["eval_harmful"],
        ({"prompt": p, "category": HAZARD_CATEGORY[t]} for p, t in eval_harmful_prompts(cfg)),
    )
    write_jsonl(
        paths["eval_benign"],
        ({"prompt": e.prompt, "answer": e.answer, "task": e.kind} for e in eval_benign(cfg)),
    )
    return paths
