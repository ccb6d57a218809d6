"""SentencePiece models: `Tokenizer` wraps a `.model` file; `train_sentencepiece` makes a
LLaMA-style BPE one.

LLaMA-style means: BPE, byte fallback (no unknown characters), digits split into single
pieces, identity normalization and no whitespace collapsing, so `decode(encode(t)) == t` for
any UTF-8 text; unk=0, bos=1, eos=2, no pad (the LLaMA-2 layout).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from megadyt.atomic import atomic_output
from megadyt.data.pile import expand_inputs, iter_texts
from megadyt.errors import MegadytError

MAX_LINE_CHARS = 4096  # longer lines are cut into pieces for training (SentencePiece skips them)


class Tokenizer:
    """A loaded SentencePiece model with the ids the data pipeline needs."""

    def __init__(self, model_path: str):
        self.model_path = os.path.abspath(model_path)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.model_path)
        except (RuntimeError, OSError) as exc:
            raise MegadytError(
                f"{model_path} is not a SentencePiece model ({str(exc).strip()}); pass a "
                "tokenizer.model file (e.g. LLaMA-2's) or train one with `megadyt train-tokenizer`"
            ) from None
        self.vocab_size: int = self.sp.get_piece_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()  # -1 when the model has none (LLaMA)
        if self.eos_id < 0:
            raise MegadytError(f"tokenizer {model_path} has no eos piece; documents need one")

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode(list(ids))

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def _training_lines(texts: Iterable[str]) -> Iterator[str]:
    """Non-empty lines of each document, long ones cut, as SentencePiece's sentences."""
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            for start in range(0, len(line), MAX_LINE_CHARS):
                yield line[start : start + MAX_LINE_CHARS]


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    output: str,
    *,
    sample_lines: int = 2_000_000,
    character_coverage: float = 0.99995,
    num_threads: int | None = None,
    verbose: bool = False,
) -> str:
    """Train a LLaMA-style BPE model from document texts; write it atomically to `output`.

    At most `sample_lines` lines (a uniform reservoir sample made by SentencePiece while it
    streams the input) are kept in memory, so the corpus never has to fit.
    Returns the absolute path of the written model.
    """
    if not output.endswith(".model"):
        raise MegadytError(f"--output {output!r} must end with .model")
    if vocab_size < 260:
        raise MegadytError(f"--vocab-size {vocab_size} is too small: byte fallback alone needs 259")
    threads = num_threads or max(1, min(8, os.cpu_count() or 1))
    with atomic_output(output) as tmp:
        try:
            with open(tmp, "wb") as writer:
                spm.SentencePieceTrainer.train(
                    sentence_iterator=_training_lines(texts),
                    model_writer=writer,
                    model_type="bpe",
                    vocab_size=vocab_size,
                    byte_fallback=True,
                    split_digits=True,
                    normalization_rule_name="identity",
                    remove_extra_whitespaces=False,
                    add_dummy_prefix=True,
                    allow_whitespace_only_pieces=True,
                    character_coverage=character_coverage,
                    input_sentence_size=sample_lines,
                    shuffle_input_sentence=True,
                    max_sentence_length=4 * MAX_LINE_CHARS + 16,  # bytes
                    unk_id=0,
                    bos_id=1,
                    eos_id=2,
                    pad_id=-1,
                    num_threads=threads,
                    minloglevel=0 if verbose else 2,
                )
        except RuntimeError as exc:
            raise MegadytError(
                f"SentencePiece training failed: {str(exc).strip()} "
                "(adjust --vocab-size or --character-coverage, or give more input text)"
            ) from None
    return os.path.abspath(output)


def train_tokenizer(inputs: list[str], vocab_size: int, output: str, **kwargs) -> str:
    """`megadyt train-tokenizer`: train from Pile-format or plain-text files."""
    return train_sentencepiece(iter_texts(expand_inputs(inputs)), vocab_size, output, **kwargs)
