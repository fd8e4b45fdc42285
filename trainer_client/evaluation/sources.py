"""What `--harmful` (star-eval) and `--prompts` (star-landscape) accept: a file, a `datasets` directory
or parquet file, or a named set shipped inside an installed package; `:SELECTOR` picks a split, a
category file or a subset."""

from __future__ import annotations

from pathlib import Path

from trainer_client.evaluation.hf_sets import is_hf_source, load_hf_harmful
from trainer_client.evaluation.loaders import HarmfulPrompt, load_harmful_prompts
from trainer_client.evaluation.named_sets import NAMED_SETS, is_named_set, load_named_set

HELP = (
    "harmful prompts: a file (AdvBench-style CSV with column `goal`, JSONL/JSON with `prompt`/"
    "`instruction`/`messages` and optional `category`, BeaverTails rows, or text, one per line), a "
    "`datasets` save_to_disk directory or .parquet file (DIR:SPLIT picks a split), a HEx-PHI directory of "
    "category_N.csv files (DIR:category_N picks one), or a named set read from an installed package: "
    + ", ".join(f"{name} ({NAMED_SETS[name].package})" for name in sorted(NAMED_SETS))
    + " (see docs/evaluation.md)"
)


def _as_path(spec: str) -> tuple[Path, str] | None:
    """(path, selector) when `spec` is an existing path, or an existing path followed by `:SELECTOR`."""
    if Path(spec).exists():
        return Path(spec), ""
    head, sep, tail = spec.rpartition(":")
    if sep and head and Path(head).exists():
        return Path(head), tail
    return None


def load_harmful(spec: str, limit: int | None = None) -> list[HarmfulPrompt]:
    """The harmful prompts `spec` names (an existing path wins over a named set of the same name)."""
    found = _as_path(spec)
    if found is not None:
        path, selector = found
        if is_hf_source(path):
            return load_hf_harmful(path, selector, limit)
        if selector:
            raise ValueError(f"{spec}: ':{selector}' applies only to a dataset directory or a named set")
        return load_harmful_prompts(path, limit)
    if is_named_set(spec):
        return load_named_set(spec, limit)
    raise ValueError(
        f"harmful prompt file not found: {spec} (no such file or directory, nor a named set: "
        f"{', '.join(sorted(NAMED_SETS))})"
    )
