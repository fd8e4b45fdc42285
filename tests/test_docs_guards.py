"""The README's preset table and docs/guards.md say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from scorer_server.guards.presets import PRESETS

ROOT = Path(__file__).resolve().parent.parent


def _rows(text: str, first_cell: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]


def test_readme_preset_table_matches_the_presets() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, preset in PRESETS.items():
        rows = _rows(readme, f"`{name}`")
        assert len(rows) == 1, name
        assert f"`{preset.safe_word}` / `{preset.unsafe_word}`" in rows[0]
        for key in preset.template_kwargs:
            assert f"`{key}" in rows[0], (name, key)
        if not preset.template_kwargs:
            assert "| none" in rows[0], name
    assert _rows(readme, "`custom`")


def test_every_failure_row_in_docs_has_its_test() -> None:
    doc = (ROOT / "docs" / "guards.md").read_text()
    tests = (ROOT / "tests" / "test_startup_errors.py").read_text()
    named = re.findall(r"^\| [^|]+ \| `(test_\w+)(?:\[([\w-]+)\])?` \|", doc, re.M)
    assert len(named) >= 10
    for test, param in named:
        assert f"def {test}(" in tests, test
        if param:
            assert f'"{param}"' in tests, param
