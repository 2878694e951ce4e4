"""The code's shape, as the project's rules state it: small functions and modules, search/ in
layers whose imports only run down, no import circles."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("search", "models", "datasets")
MAX_LINES = 80
MAX_MODULE_LINES = 300
# Longer on purpose, and why: one module per kind of synthetic image keeps each renderer beside
# the layout it writes, and they share their drawing helpers.
LONGER = {"datasets.synthetic": "the synthetic renderers and the layouts they write"}
# search/'s sub-packages from the bottom up: a module imports only from its own layer or below.
LAYERS = (
    ("search.records", "search.outcomes", "search.runtime"),  # vocabulary and the host
    ("search.spec",),  # study files and one tune's settings
    ("search.tracking",),  # everything written to MLflow
    ("search.trial",),  # one trial: data, model, training, stopping
    ("search.champion",),  # kept models, finalists, ensemble, refit, test split
    ("search.engines",),  # Optuna, Keras Tuner, the loop's limits and recovery
    ("search.study",),  # a study from start to end
    ("search.serving", "search.report"),  # export, predictor, compare; the lab report
    ("search.cli",),
)


def modules(package: str) -> dict[str, ast.Module]:
    """Every module of `package`, sub-packages too, by dotted name."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text())
    return found


def test_no_function_is_over_80_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for package in PACKAGES for name, tree in modules(package).items()
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long


def test_no_module_is_over_300_lines():
    long = [f"{path.relative_to(ROOT)}: {n} lines" for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
            and ".".join(path.relative_to(ROOT).with_suffix("").parts) not in LONGER]
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


def layer(module: str) -> int:
    for number, members in enumerate(LAYERS):
        if any(module == m or module.startswith(f"{m}.") for m in members):
            return number
    raise AssertionError(f"{module} is in no layer of LAYERS: add its package")


def test_search_imports_only_run_down_its_layers():
    known = {name for name in modules("search") if name != "search"}
    upward = [f"{name} -> {target}" for name, tree in modules("search").items()
              if name != "search"
              for target in sorted(imports(tree, known)) if layer(target) > layer(name)]
    assert not upward


def test_no_import_circles_in_search():
    known = {name for name in modules("search") if name.count(".") > 1 or
             name in ("search.records", "search.outcomes", "search.cli")}
    graph = {name: imports(tree, known) - {name} for name, tree in modules("search").items()
             if name in known}

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
