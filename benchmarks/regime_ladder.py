"""When does DyT match RMSNorm? The tiny twins at token budgets of 0.3 to 10 tokens per parameter.

    python benchmarks/regime_ladder.py --budgets 0.3 1 3 10 \\
        --norms rmsnorm rmsnorm+scalar dyt derf --seeds 2023 2024 --output DIR \\
        [--config FILE] [--parallel N] [--cache-dir data_cache] [--dry-run | --report-only]

A cell is (budget, norm, seed); any single cell runs the same way (`--budgets 3 --norms dyt
--seeds 2023`). Rerunning skips finished cells and resumes an interrupted one from its last
checkpoint: each cell is one `megadyt train` run through megadyt sweep's cell runner
(megadyt.experiments.runner), in DIR/b<budget>/<norm>/seed-<seed>/.

The recipe is the config's (configs/tiny/<norm>.yaml unless --config), on builtin:pypackages
(78M training tokens: no document is repeated even at 10 tokens per parameter), with:
- train.steps = round(budget x P / tokens per step), P the RMSNorm twin's parameter count
  (megadyt.model.counting; the twins differ by at most 20 parameters), so every norm of a
  budget trains on the same tokens. `rmsnorm+scalar` is RMSNorm with model.embedding_scale=on.
- The schedule scales with the steps: cosine over the cell's steps, warmup as the config sets
  it (the tiny twins leave train.warmup_steps unset: min(2000, steps // 20)).
- Validation once, at the end, on megatron-core's validation split of the corpus (documents
  never trained on) with data.valid_seed pinned: EVAL_ITERS x 8 = 1,024 sequences (262K
  tokens), the same samples for every cell of every budget.
- Seeds: every seed at budgets below --one-seed-from (10), only the first one from there.
- Checkpoints every SAVE_EVERY steps, the newest kept; a log record every LOG_EVERY steps;
  the regime diagnostic at min(500, steps // 10) (train.regime_diagnostic_step's default).
- --parallel N runs N cells at once with cpus // N torch threads each.

Writes DIR/ladder.json (every cell: norm, seed, budget, params, tokens, steps, final valid loss,
wall time, the regime diagnostic, the final saturation and gate figures, the copying probe of
benchmarks/ladder_copying.py; the gaps; Verma's heuristic scored), DIR/ladder.md (the table)
and DIR/ladder.png (the gap of each norm to each RMSNorm baseline against tokens per parameter).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ladder_copying import add_copying  # benchmarks/, next to this script
from ladder_figures import read_json, run_figures
from ladder_report import write_reports

CORPUS = "builtin:pypackages"
VALID_SEED = 1234
EVAL_ITERS = 128
SAVE_EVERY = 1000
LOG_EVERY = 50
NORMS = {
    "rmsnorm": {"model.norm": "rmsnorm", "model.embedding_scale": "off"},
    "rmsnorm+scalar": {"model.norm": "rmsnorm", "model.embedding_scale": "on"},
    "dyt": {"model.norm": "dyt"},
    "derf": {"model.norm": "derf"},
}
CELL_FILE = "cell.json"
_PRINT = threading.Lock()


@dataclass
class Cell:
    budget: float
    norm: str
    seed: int
    config: str
    steps: int
    params: int
    tokens: int
    run_dir: Path
    overrides: list[str]

    @property
    def label(self) -> str:
        return f"budget {self.budget:g} {self.norm} seed {self.seed}"


def _config_for(norm: str, config: str | None) -> str:
    twin = NORMS[norm]["model.norm"]
    return config or str(Path(__file__).resolve().parents[1] / "configs" / "tiny" / f"{twin}.yaml")


def plan_cells(args: argparse.Namespace) -> list[Cell]:
    """Every cell, its config loaded and validated (one-line errors before anything runs)."""
    from megadyt.config import load_config
    from megadyt.experiments.grid import cell_config
    from megadyt.experiments.runner import refuse_stale_result
    from megadyt.model.counting import count_parameters

    base = load_config(_config_for("rmsnorm", args.config), ["model.norm=rmsnorm"])
    tokens_per_step = base.tokens_per_step
    baseline_params = count_parameters(base.model).total
    cells = []
    for budget in args.budgets:
        steps = max(1, round(budget * baseline_params / tokens_per_step))
        seeds = args.seeds if budget < args.one_seed_from else args.seeds[:1]
        common = [
            f"data.prefixes=[{CORPUS}]",
            f"data.tokenizer={CORPUS}",
            f"data.cache_dir={os.path.abspath(args.cache_dir)}",
            f"data.valid_seed={VALID_SEED}",
            f"train.steps={steps}",
            f"train.eval_interval={steps}",
            f"train.eval_iters={EVAL_ITERS}",
            f"train.save_interval={min(steps, SAVE_EVERY)}",
            "train.keep_checkpoints=1",
            f"train.log_interval={min(steps, LOG_EVERY)}",
        ]
        for norm in args.norms:
            config = _config_for(norm, args.config)
            for seed in seeds:
                run_dir = Path(args.output).resolve() / f"b{budget:g}" / norm / f"seed-{seed}"
                overrides = [*common, f"run.name=b{budget:g}-{norm}-{seed}"]
                cfg = cell_config(config, overrides, NORMS[norm], seed, str(run_dir))
                if not args.report_only:
                    refuse_stale_result(run_dir, cfg)
                params = count_parameters(cfg.model).total
                tokens = steps * tokens_per_step
                cells.append(
                    Cell(budget, norm, seed, config, steps, params, tokens, run_dir, overrides)
                )
    return cells


def run_one(cell: Cell, retry_failed: bool, report_only: bool = False) -> dict:
    """Train one cell (unless done) and return its row; the wall time is kept in cell.json.
    `report_only`: train nothing; a cell without a result is reported as not run."""
    from megadyt.atomic import atomic_write_text
    from megadyt.experiments.runner import CellResult, read_result, run_cell

    start = time.perf_counter()
    if report_only:
        result = read_result(cell.run_dir)
        result = result or CellResult(str(cell.run_dir), cell.seed, {}, "not run", None)
        ran = False
    else:
        result, ran = run_cell(
            cell.config,
            cell.overrides,
            NORMS[cell.norm],
            cell.seed,
            cell.run_dir,
            cell.steps,
            retry_failed=retry_failed,
        )
    if ran:
        timing = {"wall_s": round(time.perf_counter() - start, 1), "threads": _threads()}
        atomic_write_text(cell.run_dir / CELL_FILE, json.dumps(timing))
    timing = read_json(cell.run_dir / CELL_FILE) or {}
    row = {
        "budget": cell.budget,
        "norm": cell.norm,
        "seed": cell.seed,
        "params": cell.params,
        "tokens": cell.tokens,
        "tokens_per_param": cell.tokens / cell.params,
        "steps": cell.steps,
        "status": result.status,
        "valid_loss": result.valid_loss,
        "detail": result.detail,
        **timing,
        **run_figures(cell.run_dir),
    }
    if result.valid_loss is not None:
        loss = f"valid loss {result.valid_loss:.4f}"
    else:
        loss = "not run" if result.status == "not run" else "failed"
    took = f" in {timing.get('wall_s', 0):.0f} s" if ran else " (already done)"
    with _PRINT:  # cells finish on several threads
        print(f"{cell.label}: {loss}{took}", flush=True)
    return row


def prebuild_indices(cells: list[Cell]) -> None:
    """Build the corpus and megatron-core's index caches here, once per (steps, seed), through
    the trainer's own data code: cells running side by side would otherwise write the same
    cache files at the same time (megatron-core writes them in place)."""
    from megadyt.parallel.distributed import destroy_distributed, init_distributed
    from megadyt.training.data import build_train_valid

    init_distributed(tp=1)
    try:
        done = set()
        for cell in cells:
            if (cell.steps, cell.seed) not in done:
                done.add((cell.steps, cell.seed))
                build_train_valid(config_of(cell))
    finally:
        destroy_distributed()


def config_of(cell: Cell):
    """The cell's validated Config (its run directory left out: nothing is written)."""
    from megadyt.experiments.grid import cell_config

    return cell_config(cell.config, cell.overrides, NORMS[cell.norm], cell.seed, "unused")


def corpus_dir() -> str:
    """The directory `builtin:pypackages` resolves to here. Its name is a digest of the installed
    packages' versions, which megadyt does not pin: a venv made on a later day can read other
    versions, build another corpus and move every cell's loss by seed-noise size."""
    from megadyt.data.builtin.resolve import builtin_part

    return builtin_part(CORPUS)[0].tag()


def _threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "0")) or len(os.sched_getaffinity(0))


def estimate_seconds(cells: list[Cell], rate: float) -> float:
    pending = [c for c in cells if not (c.run_dir / "result.json").is_file()]
    return sum(c.tokens for c in pending) / rate + 20.0 * len(pending)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 1, 3, 10])
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=list(NORMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2023, 2024])
    parser.add_argument("--one-seed-from", type=float, default=10, metavar="BUDGET")
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--config", help="one config for every norm (default: the tiny twins)")
    parser.add_argument("--cache-dir", default="data_cache", help="where the corpus is built")
    parser.add_argument("--parallel", type=int, default=1, help="cells at once (default 1)")
    parser.add_argument(
        "--rate", type=float, default=8000, help="training tokens/s of all cells together, for "
        "the time estimate (default 8000: the tiny model on 2 CPUs)"
    )  # fmt: skip
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument(
        "--report-only", action="store_true",
        help="train nothing: write the reports from the cells already done",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    cpus = len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(max(1, cpus // args.parallel))
    cells = plan_cells(args)
    estimate = estimate_seconds(cells, args.rate)
    print(
        f"regime ladder: {len(cells)} cells, {sum(c.tokens for c in cells) / 1e6:.1f}M tokens; "
        f"{args.parallel} at a time with {os.environ['OMP_NUM_THREADS']} thread(s) each; "
        f"estimated {estimate / 3600:.1f} h for the cells not yet done at {args.rate:,.0f} "
        "tokens/s",
        flush=True,
    )
    for cell in cells:
        print(f"  {cell.label}: {cell.steps} steps, {cell.tokens:,} tokens", flush=True)
    if args.dry_run:
        return 0
    if args.report_only:
        rows = [run_one(c, args.retry_failed, report_only=True) for c in cells]
    else:
        prebuild_indices(cells)
        with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
            rows = list(pool.map(lambda c: run_one(c, args.retry_failed), cells))
    add_copying(cells, rows, config_of)
    wall = time.perf_counter() - start
    write_reports(Path(args.output), rows, {**vars(args), "corpus": corpus_dir()}, wall)
    return 0 if all(r["status"] == "done" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
