"""The code's shape, as the project's rules state it: small functions, no import circles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "models", "datasets")
MAX_LINES = 80


def modules(package: str) -> dict[str, ast.Module]:
    return {f"{package}.{p.stem}": ast.parse(p.read_text())
            for p in sorted((ROOT / package).glob("*.py")) if p.stem != "__init__"}


def test_no_function_is_over_80_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for package in PACKAGES for name, tree in modules(package).items()
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The modules of `known` that `tree` imports anywhere (also inside functions and
    TYPE_CHECKING blocks: a loop there is still a loop for the reader)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found & known


def test_no_import_circles_in_search():
    graph = {name: imports(tree, set(modules("search"))) for name, tree in
             modules("search").items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    circles = [" -> ".join(c) for name in graph if (c := cycle_from(name))]
    assert not circles
