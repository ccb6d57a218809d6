"""`megadyt sweep`: train every grid point × seed under one output dir, then summarize.

Layout: OUTPUT/<cell name>/seed-<seed>/ is a normal run dir (checkpoints, tb/, metrics.jsonl,
train.log, result.json); OUTPUT/sweep.json, OUTPUT/sweep.md and, for two-key grids,
OUTPUT/sweep.png are the summary. OUTPUT/spec.json pins the base config and overrides: a rerun
with other ones is refused, so one output dir never mixes two experiments.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from megadyt.atomic import atomic_write_text
from megadyt.config import load_config
from megadyt.errors import MegadytError
from megadyt.experiments import report
from megadyt.experiments.grid import GridAxis, assignments, cell_config, cell_name
from megadyt.experiments.runner import CellResult, refuse_stale_result, run_cell

SPEC_FILE = "spec.json"


@dataclass
class SweepPlan:
    config: str
    overrides: list[str]
    axes: list[GridAxis]
    seeds: list[int]
    output: Path
    nproc: int = 1
    # (assignment, seed, run dir, steps) of every cell, filled (and validated) by plan_sweep
    cells: list[tuple[dict[str, str], int, Path, int]] = field(default_factory=list)

    def _validated_cells(self) -> list[tuple[dict[str, str], int, Path, int]]:
        """Every cell, each config loaded and validated once, and any result it already has
        checked against it (one-line errors)."""
        out = []
        for assignment in assignments(self.axes):
            for seed in self.seeds:
                run_dir = self.output / cell_name(assignment) / f"seed-{seed}"
                cfg = cell_config(self.config, self.overrides, assignment, seed, str(run_dir))
                refuse_stale_result(run_dir, cfg)
                out.append((assignment, seed, run_dir, cfg.train.steps))
        return out


def plan_sweep(
    config: str, overrides: list[str], axes: list[GridAxis], seeds: int, output: str, nproc: int = 1
) -> SweepPlan:
    """Validate everything up front (one-line errors, before any training starts)."""
    if seeds < 1:
        raise MegadytError(f"--seeds {seeds}: give at least 1")
    if nproc < 1:
        raise MegadytError(f"--nproc {nproc}: give at least 1")
    base = load_config(config, overrides)
    plan = SweepPlan(
        config,
        list(overrides),
        axes,
        [base.train.seed + i for i in range(seeds)],
        Path(output),
        nproc,
    )
    plan.cells = plan._validated_cells()
    return plan


def _check_spec(plan: SweepPlan) -> None:
    spec = {"config": str(Path(plan.config).resolve()), "overrides": plan.overrides}
    path = plan.output / SPEC_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != spec:
            raise MegadytError(
                f"{plan.output} holds a sweep of {saved['config']} with overrides "
                f"{saved['overrides']}, not this one; use another --output"
            )
        return
    plan.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(spec, indent=1))


def run_sweep(
    plan: SweepPlan, retry_failed: bool = False, echo: Callable[[str], None] = print
) -> tuple[list[report.PointSummary], list]:
    """Train the cells that have no result yet, then write sweep.json/.md (and .png)."""
    _check_spec(plan)
    cells = plan.cells
    results: list[CellResult] = []
    for i, (assignment, seed, run_dir, steps) in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {cell_name(assignment)} seed {seed}"
        start = time.perf_counter()
        result, ran = run_cell(
            plan.config, plan.overrides, assignment, seed, run_dir, steps, plan.nproc, retry_failed
        )
        outcome = (
            f"valid loss {result.valid_loss:.4f}"
            if result.status == "done"
            else f"failed: {result.detail}"
        )
        took = f" in {time.perf_counter() - start:.0f} s" if ran else " (already done)"
        echo(f"{label}: {outcome}{took}")
        results.append(result)
    points = assignments(plan.axes)
    summaries = report.summarize(points, results)
    meta = {
        "config": plan.config,
        "overrides": plan.overrides,
        "grid": {a.key: list(a.values) for a in plan.axes},
        "seeds": plan.seeds,
    }
    report.write_json(plan.output / "sweep.json", meta, summaries, results)
    table = report.markdown_table(plan.axes, summaries)
    atomic_write_text(plan.output / "sweep.md", table + "\n")
    if len(plan.axes) == 2:
        report.heatmap(
            plan.output / "sweep.png",
            plan.axes,
            summaries,
            f"{Path(plan.config).name}: mean of {len(plan.seeds)} seed(s)",
        )
    return summaries, results
