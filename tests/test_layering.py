"""The package layout is the architecture: lower layers never import upper ones.

Read from the source (every import statement, also those inside functions), so a shortcut
taken anywhere fails here rather than as an import cycle later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import ROOT

PACKAGE = ROOT / "megadyt"

# Each subpackage, and what it must never import (directly or inside a function).
FORBIDDEN = {
    "config": {"norms", "model", "parallel", "data", "training", "evaluation", "experiments"},
    "norms": {"model", "parallel", "data", "training", "evaluation", "experiments"},
    "model": {"data", "training", "evaluation", "experiments", "planning"},
    "parallel": {"model", "data", "training", "evaluation", "experiments"},
    "data": {"model", "training", "evaluation", "experiments"},
    "training": {"evaluation", "experiments", "planning"},
    "evaluation": {"experiments", "planning"},
    "experiments": {"evaluation"},
    "planning": {"training", "evaluation", "experiments"},
    "interop": {"model", "parallel", "data", "training", "evaluation", "experiments", "planning"},
}
THIRD_PARTY_FORBIDDEN = {"model": {"deepspeed"}, "norms": {"deepspeed"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _modules() -> list[tuple[str, Path]]:
    return [
        (path.relative_to(PACKAGE).parts[0], path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if len(path.relative_to(PACKAGE).parts) > 1
    ]


def test_the_source_tree_is_found():
    layers = {layer for layer, _ in _modules()}
    assert set(FORBIDDEN) <= layers and "cli" in layers


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer):
    bad = []
    for owner, path in _modules():
        if owner != layer:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "megadyt" and len(parts) > 1 and parts[1] in FORBIDDEN[layer]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
            if parts[0] in THIRD_PARTY_FORBIDDEN.get(layer, ()):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_outside_cli_imports_cli():
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for owner, path in _modules()
        if owner != "cli"
        for name in _imports(path)
        if name == "megadyt.cli" or name.startswith("megadyt.cli.")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", ["atomic.py", "errors.py", "warnings_filter.py"])
def test_foundation_modules_import_nothing_from_megadyt(name):
    """Every layer may use these, so they may use no layer (nor each other)."""
    imported = [n for n in _imports(PACKAGE / name) if n.split(".")[0] == "megadyt"]
    assert not imported, f"megadyt/{name} imports {imported}"


# ------------------------------------------------------------------ no import cycles anywhere


def _module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_targets(path: Path) -> set[str]:
    """Every megadyt module `path` imports: statements anywhere (also inside functions), the
    submodules `from pkg import name` names, and `importlib.import_module("...")` literals."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    return names


def import_graph(package_root: Path) -> dict[str, set[str]]:
    """Module -> the modules it imports, within one package tree. An import of a package's own
    `__init__` from inside that package is left out: it is a facade, initialised first."""
    paths = {_module_name(p, package_root): p for p in package_root.rglob("*.py")}
    packages = {_module_name(p, package_root) for p in package_root.rglob("__init__.py")}
    graph = {}
    for name, path in paths.items():
        targets = {t for t in _import_targets(path) if t in paths and t != name}
        graph[name] = {
            t for t in targets if not (t in packages and (name + ".").startswith(t + "."))
        }
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles_inside_or_between_packages():
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_sees_function_level_and_importlib_imports(tmp_path):
    """A cycle closed only by a function-level import and importlib is still a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "sub" / "__init__.py"):
        init.write_text("from pkg.sub import a\n")  # facades import their members
    (pkg / "sub" / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from pkg.sub.c import g\n")
    (pkg / "sub" / "c.py").write_text("import importlib\nimportlib.import_module('pkg.sub.a')\n")
    assert import_cycles(import_graph(pkg)) == [["pkg.sub.a", "pkg.sub.b", "pkg.sub.c"]]
    (pkg / "sub" / "c.py").write_text("import pkg.sub\n")  # the facade only: no cycle
    assert import_cycles(import_graph(pkg)) == []
