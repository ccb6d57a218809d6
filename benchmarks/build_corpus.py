"""Build a built-in corpus from scratch and time each stage: documents, tokenizer, tokens.

    python benchmarks/build_corpus.py [--corpus pypackages] [--cache-dir DIR] [--output FILE.json]

Builds into `--cache-dir` (default: a fresh temporary folder, removed afterwards; give a
folder to keep the result, e.g. `data_cache`, where a complete build is only checked again).
Prints a table and writes JSON: training/held-out documents and tokens, the corpus's MB, the
seconds of each stage and in all, with the machine. Not a test: times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

from megatron.core.datasets.indexed_dataset import IndexedDataset


def _stage(label: str, timings: dict, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    timings[label] = round(time.perf_counter() - start, 2)
    return out


def build(name: str, cache_dir: str) -> dict:
    from megadyt.data.builtin import RECIPES
    from megadyt.data.builtin.corpus import ensure_corpus, ensure_dataset, ensure_tokenizer

    recipe = RECIPES[name]
    timings: dict[str, float] = {}
    start = time.perf_counter()
    files = _stage("documents_s", timings, ensure_corpus, recipe, cache_dir)
    model = _stage("tokenizer_s", timings, ensure_tokenizer, recipe, cache_dir)
    parts = {}
    for part in ("train", "heldout"):
        prefix = _stage(
            f"tokenize_{part}_s", timings, ensure_dataset, recipe, cache_dir, model, part
        )
        dataset = IndexedDataset(prefix)
        parts[part] = {
            "documents": len(dataset),
            "tokens": int(dataset.sequence_lengths.sum()),
            "bin_mb": round(os.path.getsize(prefix + ".bin") / 1e6, 1),
        }
    timings["total_s"] = round(time.perf_counter() - start, 2)
    with open(files.sources_json) as handle:
        sources = json.load(handle)
    return {
        "corpus": f"builtin:{name}",
        "directory": os.path.basename(files.root),
        "packages": sources.get("packages"),
        "train_jsonl_mb": round(os.path.getsize(files.train_jsonl) / 1e6, 1),
        **{f"{part}_{key}": value for part, row in parts.items() for key, value in row.items()},
        **timings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="pypackages", help="stdlib or pypackages")
    parser.add_argument("--cache-dir", help="build here and keep it (default: a temporary folder)")
    parser.add_argument("--output", metavar="FILE.json")
    args = parser.parse_args()
    temp = None if args.cache_dir else tempfile.mkdtemp(prefix="megadyt-corpus-")
    try:
        row = build(args.corpus, args.cache_dir or temp)
    finally:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
    row["machine"] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    print("| stage | seconds |\n|---|---:|")
    for key in ("documents_s", "tokenizer_s", "tokenize_train_s", "tokenize_heldout_s", "total_s"):
        print(f"| {key[:-2].replace('_', ' ')} | {row[key]:.1f} |")
    print(
        f"\n{row['corpus']} ({row['directory']}): {row['train_documents']:,} training documents, "
        f"{row['train_tokens']:,} tokens ({row['train_jsonl_mb']} MB of JSON lines, "
        f"{row['train_bin_mb']} MB of tokens); held out {row['heldout_documents']:,} documents, "
        f"{row['heldout_tokens']:,} tokens; {row['machine']['cpus']} CPUs"
    )
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(row, handle, indent=1)
            handle.write("\n")


if __name__ == "__main__":
    main()
