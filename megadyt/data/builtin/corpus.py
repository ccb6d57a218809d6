"""The embedded default corpus: the running Python's standard library, built on first use.

Every Python installation has a few MB of real code and English prose (docstrings), a little
like The Pile's GitHub and documentation parts, so the tiny configs train on real text with no
download. Layout under `cache_dir/builtin/stdlib-v1-py311/`:

    corpus/train.jsonl, corpus/heldout.jsonl   Pile-format documents (two per module:
                                               `StdlibCode` = the source, `StdlibDocs` = its
                                               docstrings as prose)
    tokenizer.model                            LLaMA-style BPE, vocab 4096, trained on train.jsonl
    tok-<sha>/stdlib_train.{bin,idx}           train.jsonl tokenized with the tokenizer whose
    tok-<sha>/stdlib_heldout.{bin,idx}         file hash is <sha> (any tokenizer can be used)

Held-out modules (a fixed hash-chosen few) are never in the training prefix; they serve
validation of held-out text and evaluation tasks. Modules are sampled by a stable hash of their
path up to `TEXT_BUDGET` characters, so the build takes seconds. Each file is written under a
temporary name and renamed; a lock file serialises concurrent builders; complete files are reused.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import time
from dataclasses import dataclass

from megadyt.atomic import atomic_output, file_lock
from megadyt.config.schema import DataConfig
from megadyt.data.pile import iter_texts
from megadyt.data.prepare import prepare_data
from megadyt.data.spm import train_sentencepiece
from megadyt.errors import MegadytError

NAME = "stdlib"
VERSION = "v1"
VOCAB_SIZE = 4096
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
BUILTIN_PREFIX = "builtin:"
SPECS = {
    "builtin:stdlib": "train",
    "builtin:stdlib-heldout": "heldout",
}


@dataclass(frozen=True)
class CorpusFiles:
    root: str
    train_jsonl: str
    heldout_jsonl: str


def _root(cache_dir: str) -> str:
    tag = f"{NAME}-{VERSION}-py{sys.version_info.major}{sys.version_info.minor}"
    return os.path.join(os.path.abspath(cache_dir), "builtin", tag)


def _log(msg: str) -> None:
    print(f"megadyt: {msg}", file=sys.stderr, flush=True)


def _stdlib_modules() -> list[tuple[str, str]]:
    """(module name, path) of the stdlib's .py files, sorted, tests and data modules excluded."""
    root = sysconfig.get_paths()["stdlib"]
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


def _docstrings(module: str, source: str) -> str:
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


def _write_corpus(files: CorpusFiles) -> None:
    modules = _stdlib_modules()
    if not modules:
        raise MegadytError(f"no standard library sources under {sysconfig.get_paths()['stdlib']}")
    # A stable pseudo-random order (hash of the module name): the same sample on every machine
    # with the same Python version, and not biased to the start of the alphabet.
    modules.sort(key=lambda item: hashlib.sha256(item[0].encode()).hexdigest())
    heldout, train, used = [], [], 0
    for module, path in modules:
        if os.path.getsize(path) > MAX_MODULE_BYTES:
            continue
        try:
            with open(path, encoding="utf-8") as handle:
                source = handle.read()
        except (UnicodeDecodeError, OSError):
            continue
        if len(source.strip()) < MIN_MODULE_CHARS:
            continue
        if len(heldout) < HELDOUT_MODULES:
            heldout.append((module, source))
        elif used < TEXT_BUDGET:
            train.append((module, source))
            used += len(source)
    for target, items in ((files.train_jsonl, train), (files.heldout_jsonl, heldout)):
        with atomic_output(target) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for module, source in sorted(items):
                meta = {"pile_set_name": "StdlibCode", "module": module}
                out.write(json.dumps({"text": source, "meta": meta}, ensure_ascii=False) + "\n")
                docs = _docstrings(module, source)
                if docs:
                    meta = {"pile_set_name": "StdlibDocs", "module": module}
                    out.write(json.dumps({"text": docs, "meta": meta}, ensure_ascii=False) + "\n")


def ensure_stdlib_corpus(cache_dir: str) -> CorpusFiles:
    """The stdlib corpus as Pile-format JSON lines (built on first use, then reused)."""
    root = _root(cache_dir)
    files = CorpusFiles(
        root,
        os.path.join(root, "corpus", "train.jsonl"),
        os.path.join(root, "corpus", "heldout.jsonl"),
    )
    if os.path.exists(files.train_jsonl) and os.path.exists(files.heldout_jsonl):
        return files
    with file_lock(os.path.join(root, ".lock")):
        if not (os.path.exists(files.train_jsonl) and os.path.exists(files.heldout_jsonl)):
            start = time.perf_counter()
            _log(f"building the built-in stdlib corpus under {root} (first use)")
            _write_corpus(files)
            _log(f"stdlib corpus written in {time.perf_counter() - start:.1f} s")
    return files


def heldout_texts(cache_dir: str) -> list[str]:
    """Every held-out document of the stdlib corpus, then each of their non-empty lines: the
    texts on which a converted tokenizer must reproduce SentencePiece (whole documents, and
    lines that start mid-indentation, i.e. with spaces)."""
    with open(ensure_stdlib_corpus(cache_dir).heldout_jsonl, encoding="utf-8") as handle:
        documents = [json.loads(line)["text"] for line in handle if line.strip()]
    return documents + [line for doc in documents for line in doc.split("\n") if line]


def builtin_tokenizer_path(spec: str, cache_dir: str) -> str:
    """The built-in tokenizer's .model file, trained on the stdlib corpus on first use."""
    if spec != "builtin:stdlib":
        raise MegadytError(
            f"unknown built-in tokenizer {spec!r}; the built-in one is builtin:stdlib"
        )
    files = ensure_stdlib_corpus(cache_dir)
    path = os.path.join(files.root, "tokenizer.model")
    if os.path.exists(path):
        return path
    with file_lock(os.path.join(files.root, ".lock")):
        if not os.path.exists(path):
            start = time.perf_counter()
            _log(f"training the built-in tokenizer (vocab {VOCAB_SIZE}) on the stdlib corpus")
            train_sentencepiece(
                iter_texts([files.train_jsonl]), VOCAB_SIZE, path, sample_lines=300_000
            )
            _log(f"built-in tokenizer written to {path} in {time.perf_counter() - start:.1f} s")
    return path


def tokenizer_model_path(spec: str, cache_dir: str) -> str:
    """The absolute `.model` path a tokenizer spec (data.tokenizer, --tokenizer) names: a file,
    or `builtin:stdlib` (trained under `cache_dir` on first use). The one place specs resolve."""
    if spec.startswith(BUILTIN_PREFIX):
        return builtin_tokenizer_path(spec, cache_dir)
    if not os.path.isfile(spec):
        raise MegadytError(
            f"data.tokenizer file {spec!r} not found; set it to a SentencePiece .model file "
            "(e.g. LLaMA-2's tokenizer.model) or to builtin:stdlib"
        )
    return os.path.abspath(spec)


def _file_hash(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()[:16]


def ensure_stdlib_dataset(cache_dir: str, tokenizer_path: str, part: str = "train") -> str:
    """The indexed-dataset prefix of the stdlib corpus (`train` or `heldout`) tokenized with
    `tokenizer_path`; built on first use, reused when its .idx exists."""
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be 'train' or 'heldout', not {part!r}")
    files = ensure_stdlib_corpus(cache_dir)
    out_dir = os.path.join(files.root, f"tok-{_file_hash(tokenizer_path)}")
    prefix = os.path.join(out_dir, f"stdlib_{part}")
    if os.path.exists(prefix + ".idx") and os.path.exists(prefix + ".bin"):
        return prefix
    with file_lock(os.path.join(files.root, ".lock")):
        if not (os.path.exists(prefix + ".idx") and os.path.exists(prefix + ".bin")):
            source = files.train_jsonl if part == "train" else files.heldout_jsonl
            _log(f"tokenizing the stdlib {part} corpus into {prefix}")
            workers = max(1, min(4, len(os.sched_getaffinity(0))))
            summary = prepare_data([source], tokenizer_path, prefix, workers=workers)
            _log(f"stdlib {part}: {summary.line()}")
    return prefix


def check_prefix(prefix: str) -> None:
    missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
    if missing:
        raise MegadytError(
            f"dataset prefix {prefix!r} is incomplete: {', '.join(missing)} not found; "
            "create it with `megadyt prepare-data --output-prefix PREFIX` or fix data.prefixes"
        )


def resolve_data(data_cfg: DataConfig) -> tuple[list[str], str]:
    """(concrete dataset prefixes, concrete tokenizer .model path) for a `DataConfig`.

    `builtin:stdlib` (in `prefixes` or `tokenizer`) is built under `data_cfg.cache_dir` on first
    use; `builtin:stdlib-heldout` names the held-out part. Other prefixes must exist. Call it on
    rank 0 first, then (after a barrier) on every rank: the others only find complete files.
    """
    cache_dir = data_cfg.cache_dir
    tokenizer_path = tokenizer_model_path(data_cfg.tokenizer, cache_dir)
    prefixes = []
    for prefix in data_cfg.prefixes or ["builtin:stdlib"]:
        if prefix.startswith(BUILTIN_PREFIX):
            if prefix not in SPECS:
                raise MegadytError(
                    f"unknown built-in dataset {prefix!r} in data.prefixes; known: "
                    + ", ".join(SPECS)
                )
            prefixes.append(ensure_stdlib_dataset(cache_dir, tokenizer_path, SPECS[prefix]))
        else:
            check_prefix(prefix)
            prefixes.append(prefix)
    return prefixes, tokenizer_path
