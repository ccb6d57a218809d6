"""`megadyt compare RUN_DIR...`: loss curves of several runs against tokens, and a summary table.

Reads each run's TensorBoard logs (RUN_DIR/tb), draws train and validation loss vs tokens and, on
a second panel, the difference to the first run (the baseline); prints a markdown table of final
losses, their gap to the baseline and the zero-shot average, then the zero-shot table: every
task's score in every run, from each run's RUN_DIR/eval/step_N-SET.json of its newest step (the
run's final table, or `megadyt eval --run-dir RUN_DIR`). `--metric TAG` plots other logged
series instead, one panel per tag (e.g. the saturation monitor's `norm/saturated/final`).
"""

from __future__ import annotations

import argparse

from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable

HELP = "plot and tabulate the loss curves of several runs (first run = baseline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run dirs; the first is the baseline"
    )
    parser.add_argument(
        "--output", default="compare.png", help="PNG to write (default compare.png)"
    )
    parser.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="TAG",
        help="plot these logged scalars instead of the loss (repeatable; shell patterns, e.g. "
        "norm/saturated/final or 'norm/derivative/*')",
    )
    parser.add_argument(
        "--smooth", type=int, default=1, metavar="K", help="moving average over K train-loss points"
    )


def run(args: argparse.Namespace) -> int:
    from megadyt.evaluation.curves import (
        load_run,
        markdown_table,
        matching_metrics,
        plot,
        plot_metrics,
        zero_shot_table,
    )

    if args.smooth < 1:
        raise MegadytError(f"--smooth {args.smooth}: give a window of at least 1 point")
    if not str(args.output).lower().endswith(".png"):
        raise MegadytError(f"--output {args.output!r} must end with .png")
    check_writable(args.output, "--output")
    runs = [load_run(path) for path in args.runs]
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # same basename in different parents: use the full path
        if names.count(run.name) > 1:
            run.name = str(args.runs[i])
    if args.metric:
        path = plot_metrics(runs, matching_metrics(runs, args.metric), args.output)
    else:
        path = plot(runs, args.output, args.smooth)
    print(markdown_table(runs))
    table = zero_shot_table(runs)
    if table:
        print(f"\nzero-shot\n{table}")
    print(f"\nfigure written to {path}")
    return 0
