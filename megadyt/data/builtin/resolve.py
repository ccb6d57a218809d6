"""Specs to files: `builtin:NAME[-heldout]` and tokenizer specs to concrete paths.

The one place a `data.prefixes` entry or a tokenizer spec (`data.tokenizer`, `--tokenizer`)
is resolved. Built-in corpora are built on first use under the cache dir.
"""

from __future__ import annotations

import json
import os

from megadyt.config.schema import DataConfig
from megadyt.data.builtin.corpus import (
    CorpusFiles,
    Recipe,
    ensure_corpus,
    ensure_dataset,
    ensure_tokenizer,
)
from megadyt.data.builtin.pypackages import PackagesRecipe
from megadyt.data.builtin.stdlib import StdlibRecipe
from megadyt.errors import MegadytError

BUILTIN_PREFIX = "builtin:"
RECIPES: dict[str, Recipe] = {"stdlib": StdlibRecipe(), "pypackages": PackagesRecipe()}
# `builtin:NAME` is a corpus's training part, `builtin:NAME-heldout` its held-out modules.
SPECS: dict[str, tuple[str, str]] = {
    f"{BUILTIN_PREFIX}{name}{suffix}": (name, part)
    for name in RECIPES
    for suffix, part in (("", "train"), ("-heldout", "heldout"))
}


def builtin_part(spec: str, where: str = "") -> tuple[Recipe, str]:
    """(recipe, "train" | "heldout") of a `builtin:` corpus spec; a one-line error otherwise."""
    if spec not in SPECS:
        raise MegadytError(f"unknown built-in dataset {spec!r}{where}; known: {', '.join(SPECS)}")
    name, part = SPECS[spec]
    return RECIPES[name], part


def builtin_jsonl(spec: str, cache_dir: str) -> str:
    """The Pile-format JSON lines of a `builtin:` corpus spec (built on first use)."""
    recipe, part = builtin_part(spec)
    files = ensure_corpus(recipe, cache_dir)
    return files.train_jsonl if part == "train" else files.heldout_jsonl


def ensure_stdlib_corpus(cache_dir: str) -> CorpusFiles:
    """The stdlib corpus as Pile-format JSON lines (built on first use, then reused)."""
    return ensure_corpus(RECIPES["stdlib"], cache_dir)


def heldout_texts(cache_dir: str) -> list[str]:
    """Every held-out document of the stdlib corpus, then each of their non-empty lines: the
    texts on which a converted tokenizer must reproduce SentencePiece (whole documents, and
    lines that start mid-indentation, i.e. with spaces)."""
    with open(ensure_stdlib_corpus(cache_dir).heldout_jsonl, encoding="utf-8") as handle:
        documents = [json.loads(line)["text"] for line in handle if line.strip()]
    return documents + [line for doc in documents for line in doc.split("\n") if line]


def builtin_tokenizer_path(spec: str, cache_dir: str) -> str:
    """A built-in tokenizer's .model file (`builtin:stdlib`, `builtin:pypackages`), trained
    on its corpus on first use."""
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in RECIPES:
        raise MegadytError(
            f"unknown built-in tokenizer {spec!r}; the built-in ones are "
            + ", ".join(BUILTIN_PREFIX + n for n in RECIPES)
        )
    return ensure_tokenizer(RECIPES[name], cache_dir)


def tokenizer_model_path(spec: str, cache_dir: str) -> str:
    """The absolute `.model` path a tokenizer spec (data.tokenizer, --tokenizer) names: a file,
    or `builtin:NAME` (trained under `cache_dir` on first use). The one place specs resolve."""
    if spec.startswith(BUILTIN_PREFIX):
        return builtin_tokenizer_path(spec, cache_dir)
    if not os.path.isfile(spec):
        raise MegadytError(
            f"data.tokenizer file {spec!r} not found; set it to a SentencePiece .model file "
            "(e.g. LLaMA-2's tokenizer.model) or to builtin:stdlib"
        )
    return os.path.abspath(spec)


def check_prefix(prefix: str) -> None:
    missing = [p for p in (prefix + ".bin", prefix + ".idx") if not os.path.isfile(p)]
    if missing:
        raise MegadytError(
            f"dataset prefix {prefix!r} is incomplete: {', '.join(missing)} not found; "
            "create it with `megadyt prepare-data --output-prefix PREFIX` or fix data.prefixes"
        )


def resolve_data(data_cfg: DataConfig) -> tuple[list[str], str]:
    """(concrete dataset prefixes, concrete tokenizer .model path) for a `DataConfig`.

    `builtin:NAME` (in `prefixes` or `tokenizer`) is built under `data_cfg.cache_dir` on first
    use; `builtin:NAME-heldout` names the held-out part. Other prefixes must exist. Call it on
    rank 0 first, then (after a barrier) on every rank: the others only find complete files.
    """
    cache_dir = data_cfg.cache_dir
    tokenizer_path = tokenizer_model_path(data_cfg.tokenizer, cache_dir)
    prefixes = []
    for prefix in data_cfg.prefixes or ["builtin:stdlib"]:
        if prefix.startswith(BUILTIN_PREFIX):
            recipe, part = builtin_part(prefix, " in data.prefixes")
            prefixes.append(ensure_dataset(recipe, cache_dir, tokenizer_path, part))
        else:
            check_prefix(prefix)
            prefixes.append(prefix)
    return prefixes, tokenizer_path
