"""Texts that point somewhere point to what is there: every test file and test function
docs/fidelity.md cites is real, and every module or name the client's and the contract's source names
in backticks exists where it says."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_every_cited_test_exists() -> None:
    text = (ROOT / "docs" / "fidelity.md").read_text(encoding="utf-8")
    files = set(re.findall(r"tests/test_\w+\.py", text))
    assert len(files) >= 5
    sources = {f: (ROOT / f).read_text(encoding="utf-8") for f in files}  # a missing file raises here
    tests = set(re.findall(r"`(test_\w+)`", text))
    assert tests, "the table cites test functions by name"
    for name in tests:
        assert any(f"def {name}(" in src for src in sources.values()), name


POINTER = re.compile(r"`((?:star_client|star_contract|scorer_server|trainer_client|star_testing)(?:\.\w+)+)`")


def home_of(pointer: str) -> str:
    """Where what `pointer` names lives: the module itself, the module a name is defined in, or the
    module that exports it in its `__all__` (a deliberate re-export such as `star_client.InvalidRequest`)."""
    parts = pointer.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        home = ".".join(parts[:n])
        for attr in parts[n:]:
            exported = attr in getattr(obj, "__all__", ())
            obj = getattr(obj, attr)  # a missing name raises here
            if not exported:
                home = getattr(obj, "__module__", home)
        return home
    raise ModuleNotFoundError(pointer)


def test_the_client_and_the_contract_point_to_what_exists() -> None:
    """A `package.module.Name` in star_client's or star_contract's source (docstrings, comments,
    messages) names a module, or a name defined (or exported in `__all__`) by the module it names: not
    one merely imported there, which sends a reader to the wrong file (star_client/errors.py once sent
    InvalidRequest to scorer_server.errors; it lives in star_contract.errors)."""
    pointers = {
        m for pkg in ("star_client", "star_contract") for f in (ROOT / pkg).rglob("*.py")
        for m in POINTER.findall(f.read_text(encoding="utf-8"))
    }  # fmt: skip
    wrong = [
        f"{p} lives in {home}" for p in sorted(pointers) if (home := home_of(p)) not in (p, p[: p.rfind(".")])
    ]
    assert wrong == [], wrong
    assert "star_contract.errors.InvalidRequest" in pointers and len(pointers) >= 4
