"""The package layout is the architecture: lower layers never import upper ones.

Read from the source (every import statement, also those inside functions), so a shortcut
taken anywhere fails here rather than as an import cycle later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import ROOT

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
