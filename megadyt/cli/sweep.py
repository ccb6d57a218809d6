"""`megadyt sweep`: a grid over config keys × seeds, each cell a normal training run."""

from __future__ import annotations

import argparse

from megadyt.cli.main import add_config_arguments
from megadyt.output_paths import check_writable

HELP = "train a grid of configs × seeds and tabulate final validation losses (resumable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2,...",
        help="one swept key and its values (repeatable), e.g. --grid model.alpha0_ffn=0.5,1,2",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds per grid point: train.seed, train.seed+1, ... (default 1)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="processes per cell (megadyt's torchrun wrapper, --standalone, when > 1)",
    )
    parser.add_argument("--output", required=True, help="directory for the cells and summary")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="train failed cells again instead of keeping their failure",
    )


def run(args: argparse.Namespace) -> int:
    check_writable(args.output, "--output", directory=True)
    from megadyt.experiments.grid import parse_grid
    from megadyt.experiments.sweep import plan_sweep, run_sweep

    plan = plan_sweep(
        args.config, args.overrides, parse_grid(args.grid), args.seeds, args.output, args.nproc
    )
    print(f"sweep: {len(plan.cells)} run(s) under {plan.output}", flush=True)
    summaries, results = run_sweep(
        plan, args.retry_failed, echo=lambda line: print(line, flush=True)
    )
    from megadyt.experiments.report import markdown_table

    print(markdown_table(plan.axes, summaries))
    print(
        f"\nwritten: {plan.output / 'sweep.json'}, {plan.output / 'sweep.md'}"
        + (f", {plan.output / 'sweep.png'}" if len(plan.axes) == 2 else "")
    )
    failed = sum(r.status != "done" for r in results)
    return 1 if failed else 0
