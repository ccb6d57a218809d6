"""Norm parity: RMSNorm vs DyT vs Derf with the shipped configs, over several seeds.

For each config set (configs/<set>/{rmsnorm,dyt,derf}.yaml) and seed (train.seed, +1, +2, ...)
this trains one normal `megadyt train` run, reads its final validation loss, and prints mean ±
std per norm, the gap of the means to RMSNorm, and the per-seed paired gaps (same seed = same
data order and same initial weights in every shared parameter). Runs are resumable: a finished
run is not trained again, so an interrupted benchmark continues where it stopped.

    python benchmarks/norm_parity.py [--sets tiny small] [--seeds 3] [--output results.json]

Figures are a statement about the shipped defaults, not asserted in tests (README, "Paired runs").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from megadyt.cli.main import add_override_argument  # noqa: E402
from megadyt.config import load_config  # noqa: E402
from megadyt.experiments.runner import run_cell  # noqa: E402

NORMS = ("rmsnorm", "dyt", "derf")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets",
        nargs="+",
        default=["tiny", "small"],
        help="config directories under configs/ (default: tiny small)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--runs-dir",
        default=str(ROOT / "runs" / "norm-parity"),
        help="where the runs go: RUNS_DIR/<set>/<norm>/seed-<seed>",
    )
    add_override_argument(parser, help="override for every run")
    parser.add_argument("--output", default="norm-parity.json", help="JSON results file")
    return parser.parse_args()


def pct(value: float, base: float) -> float:
    return 100.0 * (value - base) / base


def run_set(name: str, seeds: int, runs_dir: Path, overrides: list[str]) -> dict:
    out: dict = {"norms": {}}
    for norm in NORMS:
        config = str(ROOT / "configs" / name / f"{norm}.yaml")
        base = load_config(config, overrides)
        losses = {}
        for seed in range(base.train.seed, base.train.seed + seeds):
            start = time.perf_counter()
            run_dir = runs_dir / name / norm / f"seed-{seed}"
            result, ran = run_cell(config, overrides, {}, seed, run_dir, base.train.steps)
            if result.status != "done":
                raise SystemExit(f"{run_dir}: {result.detail}")
            losses[seed] = result.valid_loss
            took = f"{time.perf_counter() - start:.0f} s" if ran else "done before"
            print(
                f"{name}/{norm} seed {seed}: valid loss {result.valid_loss:.4f} ({took})",
                flush=True,
            )
        out["norms"][norm] = {
            "losses": losses,
            "mean": statistics.fmean(losses.values()),
            "std": statistics.stdev(losses.values()) if len(losses) > 1 else 0.0,
        }
        out["steps"] = base.train.steps
    rms = out["norms"]["rmsnorm"]
    for norm in NORMS[1:]:
        mine = out["norms"][norm]
        mine["gap_of_means_pct"] = pct(mine["mean"], rms["mean"])
        mine["paired_gaps_pct"] = {
            s: pct(mine["losses"][s], rms["losses"][s]) for s in mine["losses"]
        }
    return out


def table(results: dict) -> str:
    lines = [
        "| set | norm | valid loss (mean ± std) | gap of means vs RMSNorm | per-seed gaps |",
        "|---|---|---|---|---|",
    ]
    for name, res in results.items():
        for norm, r in res["norms"].items():
            gap = f"{r['gap_of_means_pct']:+.2f}%" if "gap_of_means_pct" in r else "–"
            seeds = ", ".join(f"{g:+.2f}%" for g in r.get("paired_gaps_pct", {}).values())
            lines.append(
                f"| {name} | {norm} | {r['mean']:.4f} ± {r['std']:.4f} | {gap} | {seeds or '–'} |"
            )
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    results = {
        name: run_set(name, args.seeds, Path(args.runs_dir), args.overrides) for name in args.sets
    }
    print()
    print(table(results))
    payload = {
        "benchmark": "norm_parity",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "seeds": args.seeds,
        "overrides": args.overrides,
        "sets": results,
    }
    tmp = Path(args.output).with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(args.output)
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
