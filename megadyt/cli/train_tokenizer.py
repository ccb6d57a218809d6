"""`megadyt train-tokenizer`: a LLaMA-style SentencePiece BPE model from Pile or text files."""

from __future__ import annotations

import argparse
import time

from megadyt.data.spm import Tokenizer, train_tokenizer
from megadyt.output_paths import check_writable

HELP = "train a LLaMA-style SentencePiece BPE tokenizer (byte fallback, split digits)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE_OR_GLOB",
        help="Pile-format .jsonl/.jsonl.zst, or .txt files (globs allowed)",
    )
    parser.add_argument("--vocab-size", type=int, required=True, help="e.g. 32000 (LLaMA-2)")
    parser.add_argument("--output", required=True, metavar="PATH.model", help="model file to write")
    parser.add_argument(
        "--sample-lines",
        type=int,
        default=2_000_000,
        help="lines kept in memory (a uniform sample of the input); default %(default)s",
    )
    parser.add_argument(
        "--character-coverage",
        type=float,
        default=0.99995,
        help="share of characters given their own piece; the rest use byte fallback",
    )
    parser.add_argument("--threads", type=int, default=None, help="trainer threads")


def run(args: argparse.Namespace) -> int:
    check_writable(args.output, "--output")
    start = time.perf_counter()
    path = train_tokenizer(
        args.input,
        args.vocab_size,
        args.output,
        sample_lines=args.sample_lines,
        character_coverage=args.character_coverage,
        num_threads=args.threads,
    )
    tokenizer = Tokenizer(path)
    print(
        f"wrote {path}: vocab {tokenizer.vocab_size}, bos={tokenizer.bos_id}, "
        f"eos={tokenizer.eos_id} in {time.perf_counter() - start:.1f} s"
    )
    return 0
