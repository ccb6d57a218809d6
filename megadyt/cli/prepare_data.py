"""`megadyt prepare-data`: tokenize Pile-format shards into megatron-core indexed datasets."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from megadyt.data.builtin import builtin_jsonl
from megadyt.data.pile import expand_inputs
from megadyt.data.prepare import prepare_data
from megadyt.data.tokenizer import load_tokenizer
from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable

HELP = "tokenize Pile-format JSONL (.zst too) into PREFIX.bin/.idx for training"


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILES_OR_GLOB",
        help="Pile-format .jsonl/.jsonl.zst files or globs, .parquet/.arrow files, a `datasets` "
        "hub name, or a built-in corpus: builtin:stdlib, builtin:pypackages (built on first "
        "use; builtin:NAME-heldout: its held-out part)",
    )
    parser.add_argument(
        "--tokenizer",
        default="builtin:stdlib",
        metavar="PATH",
        help="SentencePiece .model file, or builtin:stdlib (default) or builtin:pypackages",
    )
    parser.add_argument(
        "--output-prefix", required=True, metavar="PREFIX", help="writes PREFIX.bin and PREFIX.idx"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="tokenizer processes (default: all CPUs, %(default)s here)",
    )
    parser.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip malformed lines / records without a string `text` (counted)",
    )
    parser.add_argument(
        "--split-by-subset",
        action="store_true",
        help="one output per meta.pile_set_name: PREFIX_<subset>.bin/.idx",
    )
    parser.add_argument(
        "--cache-dir",
        default="data_cache",
        help="where the built-in corpora are built (default %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _terminate(signum, frame):  # SIGTERM -> normal exit, so temporary files are removed
    sys.exit(128 + signum)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise MegadytError(f"--workers must be >= 1, got {args.workers}")
    check_writable(args.output_prefix, "--output-prefix")
    inputs: list[str] = []
    plain: list[str] = []
    for spec in args.input:
        if spec.startswith("builtin:"):
            inputs.append(builtin_jsonl(spec, args.cache_dir))
        else:
            plain.append(spec)
    inputs.extend(expand_inputs(plain) if plain else [])
    tokenizer = load_tokenizer(args.tokenizer, args.cache_dir)
    signal.signal(signal.SIGTERM, _terminate)
    summary = prepare_data(
        inputs,
        tokenizer.model_path,
        args.output_prefix,
        workers=args.workers,
        skip_bad_records=args.skip_bad_records,
        split_by_subset=args.split_by_subset,
        progress=not args.quiet,
    )
    print(f"prepare-data: {summary.line()}")
    for prefix, documents in summary.outputs.items():
        print(f"  {prefix}.bin/.idx: {documents:,} documents")
    return 0
