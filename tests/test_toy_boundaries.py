"""The toy world stays in its room: within star_toy, only the world's own modules and the demo use the
world (tests/test_package_boundaries.py keeps every other package from importing star_toy at all), and
the held-out sets shipped with the toy models are the ones the world generates."""

from __future__ import annotations

import ast
from pathlib import Path

from star_toy.eval_sets import toy_sets
from trainer_client.evaluation import cli

ROOT = Path(__file__).resolve().parent.parent
WORLD = {f"star_toy.{m}" for m in ("lexicon", "generators", "policy", "datasets")}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_benchmarks_do_not_reach_into_the_toy_world() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").rglob("*.py") if _imports(p) & WORLD]
    assert offenders == []


def test_shipped_eval_sets_are_the_worlds() -> None:
    assert cli.toy_sets() == toy_sets()
