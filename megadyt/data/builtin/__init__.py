"""The built-in corpora, built on first use under `data.cache_dir` with no download.

- `builtin:stdlib` (the default, seconds to build): the running Python's standard library,
  ~1.5M training tokens (`stdlib`).
- `builtin:pypackages` (minutes): the Python source of the packages megadyt installs, ~70M
  training tokens, named by the digest of their versions (`pypackages`).

Each is used as `data.prefixes: [builtin:NAME]` with its own tokenizer `data.tokenizer:
builtin:NAME` (vocab 4096); `builtin:NAME-heldout` is its held-out part. Modules, lowest first:
`corpus` (the shared builder and layout), `stdlib` and `pypackages` (the recipes), `resolve`
(specs to paths: the one place they are resolved).
"""

from megadyt.data.builtin.corpus import VOCAB_SIZE, CorpusFiles, ensure_corpus
from megadyt.data.builtin.resolve import (
    BUILTIN_PREFIX,
    RECIPES,
    SPECS,
    builtin_jsonl,
    builtin_tokenizer_path,
    check_prefix,
    ensure_stdlib_corpus,
    heldout_texts,
    resolve_data,
    tokenizer_model_path,
)
from megadyt.data.builtin.stdlib import HELDOUT_MODULES, MIN_MODULE_CHARS

__all__ = [
    "BUILTIN_PREFIX",
    "HELDOUT_MODULES",
    "MIN_MODULE_CHARS",
    "RECIPES",
    "SPECS",
    "VOCAB_SIZE",
    "CorpusFiles",
    "builtin_jsonl",
    "builtin_tokenizer_path",
    "check_prefix",
    "ensure_corpus",
    "ensure_stdlib_corpus",
    "heldout_texts",
    "resolve_data",
    "tokenizer_model_path",
]
