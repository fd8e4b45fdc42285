"""The packages' import rules, read from the source (runtime imports only; TYPE_CHECKING blocks skipped).

- star_contract imports none of our other packages; star_client imports only star_contract and star_proto;
- star_gateway imports only star_client and star_contract (no protobuf: the client's types);
- scorer_server imports only star_contract and star_proto of the others: never star_client, not even
  inside a function (the `star-scorer moderate` alias re-executes `star-client moderate` instead);
- trainer_client reaches scorer_server through one module, trainer_client/in_process.py;
- star_toy (the toy world and its demo) sits on top: none of the other packages imports it;
- no package's runtime imports form a cycle;
- the client, the contract and the gateway load without torch (a fresh interpreter checks).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = (
    "scorer_server",
    "trainer_client",
    "star_contract",
    "star_client",
    "star_gateway",
    "star_testing",
    "star_toy",
)
IN_PROCESS = "trainer_client.in_process"
MAX_LINES = 350


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in OURS for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    """Our modules that `path` imports at run time (at module level only, if `top_level_only`)."""
    tree = ast.parse(path.read_text())
    nodes = list(_walk_runtime(tree))
    if top_level_only:
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        nodes = [n for n in nodes if _at_module_level(parents, n)]
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {name for name in found if name.split(".")[0] in OURS}


def _at_module_level(parents: dict[ast.AST, ast.AST], node: ast.AST) -> bool:
    """True when `node` is not inside a function (module-level or class-level code runs at import)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
    return True


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_trainer_reaches_the_scorer_only_through_in_process() -> None:
    bad = []
    for mod, path in our_modules().items():
        if not mod.startswith("trainer_client") or mod == IN_PROCESS:
            continue
        hits = sorted(n for n in imports(path, mod, top_level_only=False) if n.startswith("scorer_server"))
        bad.extend(f"{mod} imports {n}" for n in hits)
    assert bad == [], "\n".join(bad)


def test_nothing_imports_the_toy_world() -> None:
    bad = [
        f"{mod} imports {n}"
        for mod, path in our_modules().items()
        if not mod.startswith("star_toy")
        for n in sorted(imports(path, mod, top_level_only=False))
        if n.split(".")[0] == "star_toy"
    ]
    assert bad == [], "\n".join(bad)


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("star_contract", {"star_contract"}),
        ("star_client", {"star_client", "star_contract"}),
        ("star_gateway", {"star_gateway", "star_client", "star_contract"}),
        ("star_testing", {"star_testing", "star_contract"}),
        ("scorer_server", {"scorer_server", "star_contract"}),
    ],
)
def test_shared_packages_import_only_below_themselves(package: str, allowed: set[str]) -> None:
    bad = []
    for mod, path in our_modules().items():
        if mod.split(".")[0] != package:
            continue
        bad.extend(
            f"{mod} imports {n}"
            for n in sorted(imports(path, mod, top_level_only=False))
            if n.split(".")[0] not in allowed
        )
    assert bad == [], "\n".join(bad)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of `graph` closes (one per back edge)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def import_graph() -> dict[str, set[str]]:
    modules = our_modules()
    return {
        mod: {r for n in imports(path, mod, top_level_only=True) if (r := _resolve(n, modules)) and r != mod}
        for mod, path in modules.items()
    }


def test_no_import_cycles() -> None:
    """Module-level imports (the ones that run when a module loads) form no cycle."""
    cycles = [" -> ".join(c) for c in find_cycles(import_graph())]
    assert cycles == [], "\n".join(cycles)


def test_the_walker_reads_imports_and_finds_cycles(tmp_path: Path) -> None:
    """Guards the tests above against passing vacuously."""
    pkg = tmp_path / "scorer_server"
    pkg.mkdir()
    (pkg / "a.py").write_text("from scorer_server.b import x\n\ndef f():\n    import trainer_client\n")
    (pkg / "b.py").write_text("from . import a\nif TYPE_CHECKING:\n    import trainer_client\n")
    assert imports(pkg / "a.py", "scorer_server.a", True) == {"scorer_server.b", "scorer_server.b.x"}
    assert "trainer_client" in imports(pkg / "a.py", "scorer_server.a", False)
    assert imports(pkg / "b.py", "scorer_server.b", False) == {"scorer_server", "scorer_server.a"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    "module", ["star_client", "star_contract.convert", "star_client.cli", "star_gateway.app"]
)
def test_client_side_loads_without_torch(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "names = ('torch', 'transformers', 'scorer_server', 'trainer_client')\n"
        "heavy = sorted(m for m in names if m in sys.modules)\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_no_file_over_the_line_limit() -> None:
    long = {
        mod: n for mod, path in our_modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"files over {MAX_LINES} lines: {long}"
