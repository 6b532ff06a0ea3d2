"""The house's floors, read from the imports (docs/architecture.md): every module of hybridscope
imports only from its own floor or the floors below, siblings on one floor do not import each
other, no import circle exists, and the engine imports nothing of the profiler.

Imports are read from the AST of every module, those inside functions included: a lazy import is
still an arrow in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hybridscope"

# Bottom to top. A module's floor is named by its first component below `hybridscope`.
FLOORS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),                            # the ground: the error hierarchy,
    frozenset({"table", "units"}),                    # and the vocabulary every floor shares
    frozenset({"store"}),
    frozenset({"attribute"}),
    frozenset({"ingest", "live", "analyze"}),          # siblings: none imports another
    frozenset({"present"}),
    frozenset({"api", "demo", "testing"}),             # what users call from Python
    frozenset({"commands"}),
    frozenset({"cli", "__main__", "__init__"}),       # the CLI and the package's own entry
)
BESIDE = "engine"  # stands beside the flow: imports nothing of the profiler


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The hybridscope modules `name` imports (a `from package import module` names the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m == "hybridscope" or m.startswith("hybridscope.")}


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _floor(module: str) -> int:
    room = _room(module)
    for level, rooms in enumerate(FLOORS):
        if room in rooms:
            return level
    raise AssertionError(f"{module}: room {room!r} has no floor; place it in FLOORS (and docs/architecture.md)")


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) - {name} for name, path in mods.items()}


GRAPH = _graph()


def test_every_room_has_a_floor():
    for module in GRAPH:
        if _room(module) != BESIDE:
            _floor(module)


def test_no_import_runs_up_or_sideways():
    wrong = []
    for module, targets in GRAPH.items():
        if _room(module) == BESIDE:
            continue
        for target in targets:
            if _room(target) == BESIDE:
                continue  # the engine is a workload anyone above the ground may drive
            mine, theirs = _floor(module), _floor(target)
            if theirs > mine or (theirs == mine and _room(target) != _room(module) and mine != len(FLOORS) - 1):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the floors:\n" + "\n".join(sorted(wrong))


def test_engine_imports_nothing_of_the_profiler():
    wrong = [f"{m} -> {t}" for m, ts in GRAPH.items() if _room(m) == BESIDE for t in ts if _room(t) != BESIDE]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    """Tarjan's strongly connected components: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


@pytest.mark.parametrize("source, target, floor_ok", [
    ("hybridscope.store.query", "hybridscope.analyze.table", False),
    ("hybridscope.analyze.decompose", "hybridscope.store.db", True),
    ("hybridscope.ingest.kineto", "hybridscope.commands._common", False),
    ("hybridscope.analyze.compare", "hybridscope.ingest", False),
])
def test_the_rule_itself(source, target, floor_ok):
    """The checker catches an upward or sideways arrow (so the tests above can fail)."""
    mine, theirs = _floor(source), _floor(target)
    ok = theirs < mine or (theirs == mine and _room(source) == _room(target))
    assert ok == floor_ok


def _code_without_docstrings(path: Path) -> str:
    """A module's source with its docstrings blanked (they may quote a definition)."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            for i in range(body[0].lineno - 1, body[0].end_lineno):
                lines[i] = ""
    return "\n".join(lines)


def test_one_definition_of_each_thing():
    """The GPU-event predicate (store.db.GPU_EVENTS), each rank's window (analyze.timeline) and the
    quantile (analyze.stats; DuckDB's quantile_cont in SQL) are defined once and used, not restated."""
    mods = {name: path for name, path in _modules().items() if _room(name) != BESIDE}
    code = {name: _code_without_docstrings(path) for name, path in mods.items()}
    restated = [m for m, c in code.items() if "'memcpy', 'memset'" in c or '"memcpy", "memset"' in c]
    assert restated == ["hybridscope.store.db"]
    assert [m for m, c in code.items() if "def rank_windows(" in c] == ["hybridscope.analyze.timeline"]
    other_quantiles = [m for m, c in code.items() if "np.percentile(" in c or "np.quantile(" in c]
    assert not other_quantiles
