"""`builtin:stdlib`, the default corpus: the running Python's standard library.

Every Python installation has a few MB of real code and English prose (docstrings), a little
like The Pile's GitHub and documentation parts, so the tiny configs train on real text with no
download. Two documents per module: `StdlibCode` = the source, `StdlibDocs` = its docstrings as
prose. Held-out modules (a fixed hash-chosen few) are never in the training part; they serve
validation of held-out text and evaluation tasks. Modules are sampled by a stable hash of their
name up to `TEXT_BUDGET` characters, so the build takes seconds (~1.5M training tokens).
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import sysconfig

from megadyt.data.builtin.corpus import Selection
from megadyt.errors import MegadytError

VERSION = "v1"
TEXT_BUDGET = 4_000_000  # characters of module source in the training corpus
HELDOUT_MODULES = 24
MAX_MODULE_BYTES = 300_000  # skip generated tables and huge data modules
MIN_MODULE_CHARS = 200  # skip empty __init__.py files and stubs
SKIP_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "encodings",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "turtledemo",
    "config-3",
    "lib-dynload",
}


def docstrings(module: str, source: str) -> str:
    """The module's docstrings as prose: one paragraph per documented module/class/function."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"Module {module}\n\n{doc}")

    def visit(node: ast.AST, qual: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{qual}.{child.name}"
                child_doc = ast.get_docstring(child)
                if child_doc:
                    kind = "Class" if isinstance(child, ast.ClassDef) else "Function"
                    parts.append(f"{kind} {name}\n\n{child_doc}")
                visit(child, name)

    visit(tree, module)
    return "\n\n".join(parts)


def read_source(path: str) -> str | None:
    """A module's text, or None when it is too large, unreadable or too short to be worth it."""
    if os.path.getsize(path) > MAX_MODULE_BYTES:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
    except (UnicodeDecodeError, OSError):
        return None
    return source if len(source.strip()) >= MIN_MODULE_CHARS else None


def _stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def _stdlib_modules() -> list[tuple[str, str]]:
    """(module name, path) of the stdlib's .py files, sorted, tests and data modules excluded."""
    root = _stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            path = os.path.join(dirpath, filename)
            rel = os.path.relpath(path, root)[: -len(".py")]
            module = rel.replace(os.sep, ".").removesuffix(".__init__")
            out.append((module, path))
    return sorted(out)


def _records(items: list[tuple[str, str]]) -> list[dict]:
    out = []
    for module, source in sorted(items):
        out.append({"text": source, "meta": {"pile_set_name": "StdlibCode", "module": module}})
        docs = docstrings(module, source)
        if docs:
            out.append({"text": docs, "meta": {"pile_set_name": "StdlibDocs", "module": module}})
    return out


class StdlibRecipe:
    name = "stdlib"
    workers = 4  # ~5 MB of text: more processes cost more to start than they save
    tokenizer_sample_chars = None  # all of it
    tokenizer_sample_lines = 300_000

    def tag(self) -> str:
        return f"{self.name}-{VERSION}-py{sys.version_info.major}{sys.version_info.minor}"

    def estimate_bytes(self) -> int:
        return 4 * TEXT_BUDGET  # JSON lines of code + docs, their tokens and the held-out part

    def select(self) -> Selection:
        modules = _stdlib_modules()
        if not modules:
            raise MegadytError(f"no standard library sources under {_stdlib_root()}")
        # A stable pseudo-random order (hash of the module name): the same sample on every
        # machine with the same Python version, and not biased to the start of the alphabet.
        modules.sort(key=lambda item: hashlib.sha256(item[0].encode()).hexdigest())
        heldout, train, used = [], [], 0
        for module, path in modules:
            source = read_source(path)
            if source is None:
                continue
            if len(heldout) < HELDOUT_MODULES:
                heldout.append((module, source))
            elif used < TEXT_BUDGET:
                train.append((module, source))
                used += len(source)
        record = {
            "corpus": self.name,
            "version": VERSION,
            "python": sys.version.split()[0],
            "train_modules": len(train),
            "heldout_modules": sorted(module for module, _ in heldout),
        }
        return Selection(_records(train), _records(heldout), record)
