"""The import graph of secretfs/ (docs/architecture.md, "Who may import whom"): no
cycles, and the layering rules the architecture page states.

Every import that runs counts, wherever it is: at module level and inside a function (a
cycle deferred into a function is still one between concerns). Imports under
`if TYPE_CHECKING:` name types only and never run: they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "secretfs"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _known(name: str) -> str | None:
    """The secretfs module `name` is, or is in (an imported function: its module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(filter(None, (_known(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                # `from secretfs.cli import secret` imports the module secret.
                name = _known(f"{base}.{alias.name}") or _known(base)
                if name is not None:
                    found.add(name)
    found.discard(module)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read() -> None:
    # The checks below would pass on an empty graph: make sure the parser sees imports.
    assert "secretfs.vault" in GRAPH["secretfs.keyrotation"]
    assert "secretfs.cli.common" in GRAPH["secretfs.cli.secret"]
    assert "secretfs.cli.secret" in GRAPH["secretfs.cli"]  # inside commands()
    assert "secretfs.resolver.server" in GRAPH["secretfs.daemon"]  # inside a function
    # The etcd records name their location for types only (under TYPE_CHECKING).
    assert "secretfs.store.etcd.location" not in GRAPH["secretfs.store.etcd.records"]


def test_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def _importers(target: str) -> set[str]:
    return {
        m
        for m, deps in GRAPH.items()
        if any(d == target or d.startswith(target + ".") for d in deps)
    }


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        # Nothing imports the CLI but the CLI and `python -m secretfs`.
        ("secretfs.cli", ("secretfs.cli", "secretfs.__main__")),
        # Only the mount command and the resolver's daemon hook start a mount (pyfuse3).
        ("secretfs.daemon", ("secretfs.cli.mount",)),
        # Key operations sit above the store: the store never imports them.
        ("secretfs.keyrotation", ("secretfs.cli.key", "secretfs.cli.node", "secretfs.cli.doctor")),
    ],
)
def test_who_may_import(target: str, allowed: tuple[str, ...]) -> None:
    outside = {
        m
        for m in _importers(target)
        if m != target
        and not m.startswith(target + ".")
        and not any(m == a or m.startswith(a + ".") for a in allowed)
    }
    assert outside == set()


def test_the_store_and_vault_stay_below_the_mount() -> None:
    below = [m for m in GRAPH if m.startswith(("secretfs.store", "secretfs.vault"))]
    above = {"secretfs.daemon", "secretfs.fs", "secretfs.tree", "secretfs.keyrotation"}
    for module in below:
        assert not GRAPH[module] & above, module
