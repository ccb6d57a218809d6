"""`megadyt prepare-data`: Pile-format text to megatron-core indexed datasets (PREFIX.bin/.idx).

Design:
- The main process reads the inputs (decompressing `.zst`) and cuts them into chunks of raw
  records; worker processes parse the JSON and tokenize; the main process writes the results
  with megatron-core's `IndexedDatasetBuilder` *in input order*, so any number of workers gives
  byte-identical files. At most `4 × workers` chunks are in flight (bounded memory).
- Every document gets eos appended. Empty documents are skipped and counted; a bad record
  (malformed JSON, no string `text`) stops the run with file and line, unless skipped on request.
- Output goes to `PREFIX.bin.tmp-PID`/`PREFIX.idx.tmp-PID`, renamed at the very end (an old
  `.idx` is removed first, the new `.idx` is renamed last), so a dataset whose `.idx` exists is
  complete and an interrupted run never leaves one behind.
- Workers end with the main process (`megadyt.data.lifeline`): a `kill -9` of it leaves no
  orphan tokenizing on, and no `BrokenPipeError` tracebacks.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import sentencepiece as spm

from megadyt.atomic import remove_stale_temps, temp_path
from megadyt.data.lifeline import exit_with_parent
from megadyt.data.pile import BadRecord, iter_raw_records, parse_record
from megadyt.data.spm import Tokenizer
from megadyt.errors import MegadytError

CHUNK_RECORDS = 256
CHUNK_BYTES = 4 << 20
OK, EMPTY, BAD = 0, 1, 2
UNLABELLED = "unlabelled"


@dataclass
class PrepareSummary:
    documents: int = 0
    tokens: int = 0  # including the appended eos tokens
    skipped_empty: int = 0
    skipped_bad: int = 0
    seconds: float = 0.0
    outputs: dict[str, int] = field(default_factory=dict)  # prefix -> documents

    def line(self) -> str:
        rate = self.tokens / max(self.seconds, 1e-9)
        return (
            f"{self.documents:,} documents, {self.tokens:,} tokens, skipped "
            f"{self.skipped_empty:,} empty and {self.skipped_bad:,} bad records in "
            f"{self.seconds:.1f} s ({rate:,.0f} tokens/s)"
        )


# ---- worker side ---------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(model_path: str, parent: int | None = None) -> None:
    """Load the tokenizer; in a pool worker (`parent` given) also end with the parent."""
    if parent is not None:
        exit_with_parent(parent)  # no orphans or BrokenPipe tracebacks after a kill -9
    sp = spm.SentencePieceProcessor(model_file=model_path)
    _WORKER["sp"] = sp
    _WORKER["eos"] = sp.eos_id()
    _WORKER["dtype"] = np.uint16 if sp.get_piece_size() < 65500 else np.int32  # = megatron's


def _process_chunk(chunk: tuple[str, list[tuple[int, object]]]) -> list[tuple]:
    """[(line, OK, subset, ids) | (line, EMPTY) | (line, BAD, reason)] for one chunk, in order."""
    _, records = chunk
    out: list[tuple] = []
    texts: list[str] = []
    slots: list[int] = []
    for line, raw in records:
        try:
            text, subset = parse_record(raw)
        except BadRecord as exc:
            out.append((line, BAD, str(exc)))
            continue
        if not text.strip():
            out.append((line, EMPTY))
            continue
        slots.append(len(out))
        out.append((line, OK, subset))
        texts.append(text)
    if texts:
        sp, eos, dtype = _WORKER["sp"], _WORKER["eos"], _WORKER["dtype"]
        for slot, ids in zip(slots, sp.encode(texts, out_type=int, num_threads=1)):
            ids.append(eos)
            out[slot] = (*out[slot], np.asarray(ids, dtype=dtype))
    return out


# ---- main side -----------------------------------------------------------------------------


def _chunks(paths: list[str]) -> Iterator[tuple[str, list[tuple[int, object]]]]:
    for path in paths:
        batch: list[tuple[int, object]] = []
        size = 0
        for record in iter_raw_records(path):
            batch.append((record.line, record.raw))
            size += len(record.raw) if isinstance(record.raw, bytes | str) else 1024
            if len(batch) >= CHUNK_RECORDS or size >= CHUNK_BYTES:
                yield path, batch
                batch, size = [], 0
        if batch:
            yield path, batch


def _ordered_results(paths, model_path: str, workers: int):
    """(source, results) per chunk, in input order; parallel when workers > 1."""
    if workers <= 1:
        _init_worker(model_path)
        for chunk in _chunks(paths):
            yield chunk[0], _process_chunk(chunk)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch
    init_args = (model_path, os.getpid())
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending: collections.deque = collections.deque()
        for chunk in _chunks(paths):
            pending.append((chunk[0], pool.apply_async(_process_chunk, (chunk,))))
            while len(pending) >= 4 * workers:
                source, result = pending.popleft()
                yield source, result.get()
        while pending:
            source, result = pending.popleft()
            yield source, result.get()


def subset_prefix(prefix: str, subset: str | None) -> str:
    """Output prefix of one Pile subset, e.g. `out/pile_Pile-CC`, `out/pile_Ubuntu_IRC`."""
    name = re.sub(r"[^A-Za-z0-9.+-]+", "_", subset or UNLABELLED).strip("_") or UNLABELLED
    return f"{prefix}_{name}"


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.start = self.last = time.perf_counter()

    def update(self, summary: PrepareSummary, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        msg = (
            f"prepare-data: {summary.documents:,} docs ({summary.documents / elapsed:,.0f} docs/s)"
            f", {summary.tokens:,} tokens ({summary.tokens / elapsed:,.0f} tokens/s)"
            f", skipped {summary.skipped_empty + summary.skipped_bad:,}"
        )
        end = "\n" if force or not self.tty else ""
        print(("\r" if self.tty else "") + msg, end=end, file=sys.stderr, flush=True)


class _Outputs:
    """The output prefixes of one run: megatron-core builders writing temporary files, renamed
    together at the end (`commit`) or removed (`close`)."""

    def __init__(self, dtype, summary: PrepareSummary) -> None:
        self.dtype, self.summary = dtype, summary
        self.builders: dict = {}  # final prefix -> IndexedDatasetBuilder writing temps
        self.temps: list[str] = []

    def open(self, prefix: str):
        if prefix not in self.builders:
            from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

            for suffix in (".bin", ".idx"):
                remove_stale_temps(prefix + suffix)
                self.temps.append(temp_path(prefix + suffix))
            self.builders[prefix] = IndexedDatasetBuilder(
                temp_path(prefix + ".bin"), dtype=self.dtype
            )
            self.summary.outputs[prefix] = 0
        return self.builders[prefix]

    def add(self, prefix: str, ids: np.ndarray) -> None:
        self.open(prefix).add_document(ids, [ids.size])
        self.summary.outputs[prefix] += 1
        self.summary.documents += 1
        self.summary.tokens += int(ids.size)

    def commit(self) -> None:
        for prefix, builder in self.builders.items():
            builder.finalize(temp_path(prefix + ".idx"))
        for prefix in self.builders:  # .idx disappears first and comes back last
            with contextlib.suppress(FileNotFoundError):
                os.remove(prefix + ".idx")
            os.replace(temp_path(prefix + ".bin"), prefix + ".bin")
            os.replace(temp_path(prefix + ".idx"), prefix + ".idx")

    def close(self) -> None:
        for builder in self.builders.values():
            with contextlib.suppress(Exception):
                builder.data_file.close()
        for path in self.temps:  # none left after a commit
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _take(item: tuple, source: str, outputs: _Outputs, prefix_of, skip_bad: bool) -> None:
    """Count one chunk result; a document goes to `prefix_of(its subset)`, a bad record stops
    the run unless `skip_bad`."""
    line, kind = item[0], item[1]
    if kind == BAD:
        if not skip_bad:
            raise MegadytError(
                f"{source}:{line}: bad record: {item[2]}; fix it or pass --skip-bad-records"
            )
        outputs.summary.skipped_bad += 1
    elif kind == EMPTY:
        outputs.summary.skipped_empty += 1
    else:
        outputs.add(prefix_of(item[2]), item[3])


def prepare_data(
    inputs: list[str],
    tokenizer_path: str,
    output_prefix: str,
    *,
    workers: int = 1,
    skip_bad_records: bool = False,
    split_by_subset: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Tokenize `inputs` (files, already expanded) into `output_prefix`.bin/.idx (or one
    prefix per Pile subset with `split_by_subset`) and return the counts."""
    from megatron.core.datasets.indexed_dataset import DType

    tokenizer = Tokenizer(tokenizer_path)  # validates the model file in the main process
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    summary = PrepareSummary()
    outputs = _Outputs(DType.optimal_dtype(tokenizer.vocab_size), summary)
    meter = _Progress(progress)
    start = time.perf_counter()

    def prefix_of(subset: str | None) -> str:
        return subset_prefix(output_prefix, subset) if split_by_subset else output_prefix

    try:
        if not split_by_subset:
            outputs.open(output_prefix)  # temp files exist from the start
        for source, results in _ordered_results(inputs, tokenizer.model_path, workers):
            for item in results:
                _take(item, source, outputs, prefix_of, skip_bad_records)
            meter.update(summary)
        if summary.documents == 0:
            raise MegadytError(
                f"no documents found in {', '.join(inputs)} "
                f"({summary.skipped_empty} empty, {summary.skipped_bad} bad records)"
            )
        outputs.commit()
    finally:
        outputs.close()
    summary.seconds = time.perf_counter() - start
    meter.update(summary, force=True)
    return summary
