"""prepare-data throughput on the built-in stdlib corpus, against a plain single-process loop.

    python benchmarks/prepare_data.py [--cache-dir data_cache] [--workers 1 2] [--repeat 3]

The baseline is the simplest correct program: read JSON lines, encode each text with
SentencePiece, append eos, write with megatron-core's `IndexedDatasetBuilder`. Both write to a
temporary folder; the best of `--repeat` runs is reported (tokens/s, tokens/s per worker, and the
ratio to the baseline). Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import sentencepiece as spm


def baseline(jsonl: str, model: str, prefix: str) -> int:
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    sp = spm.SentencePieceProcessor(model_file=model)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(sp.vocab_size()))
    tokens = 0
    with open(jsonl, encoding="utf-8") as handle:
        for line in handle:
            ids = sp.encode(json.loads(line)["text"]) + [sp.eos_id()]
            builder.add_document(np.asarray(ids), [len(ids)])
            tokens += len(ids)
    builder.finalize(prefix + ".idx")
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from megadyt.data.builtin import builtin_tokenizer_path, ensure_stdlib_corpus
    from megadyt.data.prepare import prepare_data

    jsonl = ensure_stdlib_corpus(args.cache_dir).train_jsonl
    model = builtin_tokenizer_path("builtin:stdlib", args.cache_dir)
    mb = os.path.getsize(jsonl) / 1e6
    print(f"corpus {jsonl} ({mb:.1f} MB), tokenizer {model}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            tokens = baseline(jsonl, model, os.path.join(tmp, "base"))
            best = min(best, time.perf_counter() - start)
        base_rate = tokens / best
        print(f"baseline loop (1 process): {base_rate:,.0f} tokens/s")
        for workers in args.workers:
            best = float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                summary = prepare_data(
                    [jsonl],
                    model,
                    os.path.join(tmp, f"w{workers}"),
                    workers=workers,
                    progress=False,
                )
                best = min(best, time.perf_counter() - start)
            rate = summary.tokens / best
            print(
                f"prepare-data --workers {workers}: {rate:,.0f} tokens/s, "
                f"{rate / workers:,.0f} tokens/s per worker, {rate / base_rate:.2f}x baseline"
            )
            same = all(
                open(os.path.join(tmp, f"w{workers}{s}"), "rb").read()
                == open(os.path.join(tmp, f"base{s}"), "rb").read()
                for s in (".bin", ".idx")
            )
            print(f"  output identical to the baseline's: {same}")


if __name__ == "__main__":
    main()
