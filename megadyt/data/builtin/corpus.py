"""Building a built-in corpus from a recipe: documents, tokenizer, tokenized datasets.

A recipe (`stdlib.StdlibRecipe`, `pypackages.PackagesRecipe`) says what the documents are; this
module owns how every built-in corpus is laid out, built and reused. Under
`cache_dir/builtin/<recipe tag>/`:

    sources.json                               what the corpus was built from (the recipe's record)
    corpus/train.jsonl, corpus/heldout.jsonl   Pile-format documents
    tokenizer.model                            LLaMA-style BPE, vocab 4096, trained on train.jsonl
    tok-<sha>/<name>_train.{bin,idx}           train.jsonl tokenized with the tokenizer whose
    tok-<sha>/<name>_heldout.{bin,idx}         file hash is <sha> (any tokenizer can be used)

The tag names the inputs (Python version, package versions), so a build never mixes sources:
other inputs get another directory. Every file is written under a temporary name and renamed;
a lock file serialises concurrent builders; complete files are reused. A build that would not
fit on the disk is refused before it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from megadyt.atomic import atomic_output, atomic_write_text, file_lock
from megadyt.data.pile import iter_texts
from megadyt.data.prepare import prepare_data
from megadyt.data.spm import train_sentencepiece
from megadyt.errors import MegadytError

VOCAB_SIZE = 4096
PARTS = ("train", "heldout")
DISK_MARGIN = 64 << 20  # bytes kept free beyond a build's estimate (logs, checkpoints)


@dataclass
class Selection:
    """A recipe's documents, in the order they are written, and the record of their sources."""

    train: list[dict] = field(default_factory=list)  # Pile-format records {"text", "meta"}
    heldout: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # written to sources.json


class Recipe(Protocol):
    name: str  # the corpus is `builtin:<name>`, its held-out part `builtin:<name>-heldout`
    workers: int  # at most this many tokenizer processes for its datasets
    tokenizer_sample_chars: int | None  # characters of train.jsonl the tokenizer sees (None: all)
    tokenizer_sample_lines: int  # SentencePiece's input_sentence_size

    def tag(self) -> str:
        """The cache directory's name: it changes whenever the documents could."""
        ...

    def estimate_bytes(self) -> int:
        """Disk space the whole build needs, at most (read from file sizes: cheap)."""
        ...

    def select(self) -> Selection: ...


@dataclass(frozen=True)
class CorpusFiles:
    root: str
    train_jsonl: str
    heldout_jsonl: str
    sources_json: str


FreeBytes = Callable[[str], int]


def disk_free(path: str) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def log(msg: str) -> None:
    print(f"megadyt: {msg}", file=sys.stderr, flush=True)


def check_disk(recipe: Recipe, root: str, needed: int, free_bytes: FreeBytes) -> None:
    """Refuse a build step that would not fit on the disk of `root`, before writing anything."""
    free = free_bytes(root)
    if free < needed + DISK_MARGIN:
        raise MegadytError(
            f"not enough disk space to build builtin:{recipe.name} under {root}: it needs about "
            f"{(needed + DISK_MARGIN) / 1e6:,.0f} MB and {free / 1e6:,.0f} MB are free; free some "
            "space or point data.cache_dir (prepare-data --cache-dir) at a larger disk"
        )


def corpus_files(recipe: Recipe, cache_dir: str) -> CorpusFiles:
    root = os.path.join(os.path.abspath(cache_dir), "builtin", recipe.tag())
    return CorpusFiles(
        root,
        os.path.join(root, "corpus", "train.jsonl"),
        os.path.join(root, "corpus", "heldout.jsonl"),
        os.path.join(root, "sources.json"),
    )


def _complete(files: CorpusFiles) -> bool:
    return os.path.exists(files.train_jsonl) and os.path.exists(files.heldout_jsonl)


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def ensure_corpus(recipe: Recipe, cache_dir: str, free_bytes: FreeBytes = disk_free) -> CorpusFiles:
    """The recipe's corpus as Pile-format JSON lines (built on first use, then reused).
    sources.json is written first and train.jsonl last, so a corpus whose JSON lines both
    exist is complete."""
    files = corpus_files(recipe, cache_dir)
    if _complete(files):
        return files
    with file_lock(os.path.join(files.root, ".lock")):
        if not _complete(files):
            check_disk(recipe, files.root, recipe.estimate_bytes(), free_bytes)
            start = time.perf_counter()
            log(f"building the built-in {recipe.name} corpus under {files.root} (first use)")
            selection = recipe.select()
            atomic_write_text(files.sources_json, json.dumps(selection.record, indent=1) + "\n")
            write_jsonl(files.heldout_jsonl, selection.heldout)
            write_jsonl(files.train_jsonl, selection.train)
            mb = os.path.getsize(files.train_jsonl) / 1e6
            log(
                f"{recipe.name} corpus written in {time.perf_counter() - start:.1f} s: "
                f"{len(selection.train):,} training documents ({mb:,.1f} MB), "
                f"{len(selection.heldout):,} held-out"
            )
    return files


def _sample(texts: Iterable[str], chars: int | None) -> Iterator[str]:
    """The first documents of `texts` up to `chars` characters (all of them for None)."""
    used = 0
    for text in texts:
        if chars is not None and used >= chars:
            return
        used += len(text)
        yield text


def ensure_tokenizer(recipe: Recipe, cache_dir: str, free_bytes: FreeBytes = disk_free) -> str:
    """The recipe's tokenizer .model file, trained on (a sample of) its training documents on
    first use. The sample is the first documents of train.jsonl (a recipe writes them in a
    stable pseudo-random order) and stays under SentencePiece's sentence limit, so SentencePiece
    draws no random sample of its own: the same documents give the same model."""
    files = ensure_corpus(recipe, cache_dir, free_bytes)
    path = os.path.join(files.root, "tokenizer.model")
    if os.path.exists(path):
        return path
    with file_lock(os.path.join(files.root, ".lock")):
        if not os.path.exists(path):
            start = time.perf_counter()
            sample = recipe.tokenizer_sample_chars
            size = "all of" if sample is None else f"the first {sample / 1e6:,.0f}M characters of"
            log(f"training the built-in tokenizer (vocab {VOCAB_SIZE}) on {size} {recipe.name}")
            texts = _sample(iter_texts([files.train_jsonl]), sample)
            train_sentencepiece(texts, VOCAB_SIZE, path, sample_lines=recipe.tokenizer_sample_lines)
            log(f"built-in tokenizer written to {path} in {time.perf_counter() - start:.1f} s")
    return path


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def ensure_dataset(
    recipe: Recipe,
    cache_dir: str,
    tokenizer_path: str,
    part: str = "train",
    free_bytes: FreeBytes = disk_free,
) -> str:
    """The indexed-dataset prefix of the recipe's corpus (`train` or `heldout`) tokenized with
    `tokenizer_path`; built on first use, reused when its .idx exists."""
    if part not in PARTS:
        raise ValueError(f"part must be 'train' or 'heldout', not {part!r}")
    files = ensure_corpus(recipe, cache_dir, free_bytes)
    out_dir = os.path.join(files.root, f"tok-{file_hash(tokenizer_path)}")
    prefix = os.path.join(out_dir, f"{recipe.name}_{part}")
    if os.path.exists(prefix + ".idx") and os.path.exists(prefix + ".bin"):
        return prefix
    with file_lock(os.path.join(files.root, ".lock")):
        if not (os.path.exists(prefix + ".idx") and os.path.exists(prefix + ".bin")):
            source = files.train_jsonl if part == "train" else files.heldout_jsonl
            # ≤ 2 bytes a token and ≥ 1 character of JSON a token: the .bin is smaller
            check_disk(recipe, files.root, os.path.getsize(source), free_bytes)
            workers = max(1, min(recipe.workers, len(os.sched_getaffinity(0))))
            log(f"tokenizing the {recipe.name} {part} corpus into {prefix} ({workers} workers)")
            summary = prepare_data([source], tokenizer_path, prefix, workers=workers)
            log(f"{recipe.name} {part}: {summary.line()}")
    return prefix
