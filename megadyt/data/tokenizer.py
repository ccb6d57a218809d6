"""`load_tokenizer(spec)`: the tokenizer a config names, ready to use.

A spec is a SentencePiece `.model` file or `builtin:NAME` (trained on that built-in corpus on
first use). This module sits above both `spm` (the `Tokenizer` class, training) and `builtin`
(which needs training to build its tokenizer), so the dependency runs one way:
spm <- prepare <- builtin <- tokenizer.
"""

from __future__ import annotations

from megadyt.data.builtin import tokenizer_model_path
from megadyt.data.spm import Tokenizer

__all__ = ["Tokenizer", "load_tokenizer"]


def load_tokenizer(spec: str, cache_dir: str = "data_cache") -> Tokenizer:
    """A `.model` path, or `builtin:NAME` (built under `cache_dir` on first use)."""
    return Tokenizer(tokenizer_model_path(spec, cache_dir))
