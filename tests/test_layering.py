"""The layering of DESIGN.md, enforced: import-linter's contracts (pyproject.toml) and no import cycle anywhere.

Function-local imports count: a cycle hidden inside a function is still a cycle a newcomer has to untangle.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    from importlinter.cli import lint_imports
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("core", "tui"):
        for p in (REPO / pkg).rglob("*.py"):
            rel = p.relative_to(REPO).with_suffix("")
            mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            candidates = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in mods:
                c = c.rpartition(".")[0]
            if c and c != name:
                found.add(c)
    return found


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    # packages importing their own submodules' names (re-exports) are not cycles between modules
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_no_module_over_600_lines():
    long = [f"{p.relative_to(REPO)} ({n})" for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > 600]
    assert not long, long
