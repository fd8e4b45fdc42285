"""The toy world stays in its room: nothing outside trainer_client/toy imports it, and the held-out sets
shipped with the toy models are the ones the world generates."""

from __future__ import annotations

import ast
from pathlib import Path

from trainer_client.evaluation import cli
from trainer_client.toy.eval_sets import toy_sets

ROOT = Path(__file__).resolve().parent.parent
WORLD = {f"trainer_client.toy.{m}" for m in ("lexicon", "generators", "policy", "datasets")}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_nothing_outside_toy_imports_the_toy_world() -> None:
    offenders = []
    for folder in ("scorer_server", "trainer_client", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if "toy" in path.relative_to(ROOT).parts[:2]:
                continue
            if _imports(path) & WORLD:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_shipped_eval_sets_are_the_worlds() -> None:
    assert cli.toy_sets() == toy_sets()
