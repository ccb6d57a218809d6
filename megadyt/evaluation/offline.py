"""Offline evaluation data, built from the held-out part of the embedded stdlib corpus.

The task YAMLs under `evaluation/tasks/` (repository root) load their documents through
`load_task_data`, which writes them on first use to
`CACHE_DIR/eval/<task>-<VERSION>.jsonl` and reuses them afterwards. CACHE_DIR is
the directory given to `using_cache_dir` (`megadyt eval` and periodic evaluation pass the run's
`data.cache_dir`), else `$MEGADYT_CACHE_DIR`, else `data_cache` (the configs' default).
The examples are a fixed, seeded sample of the held-out modules (never in the training
prefix), so they depend only on the Python version whose standard library the corpus comes from.

Tasks:
    stdlib_nextline      multiple choice: after up to 8 lines of held-out code or docstring
                         prose, pick the true next line among 4 (3 distractors are lines from
                         other held-out documents of the same kind, re-indented like the answer)
    stdlib_nextline_gen  the same kind of examples, greedy generation of the next line
                         (exact match, leading whitespace ignored)
    stdlib_heldout_ppl   rolling log-likelihood of held-out documents (first 8,000 characters
                         of each): word/byte perplexity and bits per byte
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

from megadyt.atomic import atomic_output, file_lock
from megadyt.data.builtin import ensure_stdlib_corpus

VERSION = "v1"
TASKS_DIR = Path(__file__).resolve().parents[2] / "evaluation" / "tasks"
NEXTLINE_EXAMPLES = 400
NEXTLINE_GEN_EXAMPLES = 100
PPL_MAX_CHARS = 8000
CONTEXT_LINES = 8
OFFLINE_TASKS = ["stdlib_nextline", "stdlib_nextline_gen", "stdlib_heldout_ppl"]


_CACHE_OVERRIDE: list[str] = []


@contextlib.contextmanager
def using_cache_dir(path: str) -> Iterator[None]:
    """Build/read offline task data under `path` inside the block (no process-wide env var,
    which would leak into later runs and child processes)."""
    _CACHE_OVERRIDE.append(path)
    try:
        yield
    finally:
        _CACHE_OVERRIDE.pop()


def cache_dir() -> str:
    if _CACHE_OVERRIDE:
        return _CACHE_OVERRIDE[-1]
    return os.environ.get("MEGADYT_CACHE_DIR") or "data_cache"


def _heldout_documents(cache: str) -> list[dict]:
    files = ensure_stdlib_corpus(cache)
    with open(files.heldout_jsonl, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _eligible(line: str) -> bool:
    text = line.strip()
    return 8 <= len(text) <= 120 and not text.startswith("#")


def _nextline_examples(docs: list[dict], count: int, seed: int) -> list[dict]:
    """(context, 4 choices, label) examples; deterministic for a given corpus."""
    candidates, pools = [], {}
    for doc_index, doc in enumerate(docs):
        kind = doc["meta"]["pile_set_name"]
        lines = doc["text"].split("\n")
        for i, line in enumerate(lines):
            if not _eligible(line):
                continue
            pools.setdefault(kind, []).append((doc_index, line.strip()))
            context = lines[max(0, i - CONTEXT_LINES) : i]
            if sum(1 for c in context if c.strip()) >= 3:
                candidates.append((doc_index, kind, "\n".join(context) + "\n", line.rstrip()))
    rng = random.Random(seed)
    examples = []
    for doc_index, kind, context, answer in rng.sample(candidates, min(count, len(candidates))):
        indent = answer[: len(answer) - len(answer.lstrip())]
        others = [t for d, t in pools[kind] if d != doc_index and t != answer.strip()]
        distractors = []
        while len(distractors) < 3:
            pick = indent + rng.choice(others)
            if pick not in distractors:
                distractors.append(pick)
        label = rng.randrange(4)
        choices = distractors[:label] + [answer] + distractors[label:]
        examples.append(
            {
                "context": context,
                "choices": choices,
                "label": label,
                "answer": answer.strip(),
                "module": docs[doc_index]["meta"]["module"],
                "kind": kind,
            }
        )
    return examples


def _ppl_examples(docs: list[dict]) -> list[dict]:
    out = []
    for doc in docs:
        text = doc["text"]
        if len(text) > PPL_MAX_CHARS:
            text = text[: text.rfind("\n", 0, PPL_MAX_CHARS) + 1] or text[:PPL_MAX_CHARS]
        out.append(
            {"text": text, "module": doc["meta"]["module"], "kind": doc["meta"]["pile_set_name"]}
        )
    return out


def build_task_data(task: str, cache: str | None = None) -> str:
    """Write (once) and return the JSONL file of one offline task's test documents."""
    if task not in OFFLINE_TASKS:
        raise ValueError(f"unknown offline task {task!r}; known: {', '.join(OFFLINE_TASKS)}")
    cache = cache or cache_dir()
    root = Path(cache).resolve() / "eval"
    path = root / f"{task}-{VERSION}.jsonl"
    if path.exists():
        return str(path)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(str(root / ".lock")):
        if path.exists():
            return str(path)
        docs = _heldout_documents(cache)
        if task == "stdlib_nextline":
            rows = _nextline_examples(docs, NEXTLINE_EXAMPLES, seed=1)
        elif task == "stdlib_nextline_gen":
            rows = _nextline_examples(docs, NEXTLINE_GEN_EXAMPLES, seed=2)
        else:
            rows = _ppl_examples(docs)
        with atomic_output(str(path)) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return str(path)


def load_task_data(task: str, **_metadata):
    """A `datasets.DatasetDict` with one `test` split (lm-eval's `custom_dataset` hook)."""
    import datasets

    with open(build_task_data(task), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
