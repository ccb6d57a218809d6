"""RMSNorm -> DyT/Derf conversion: the recovery curve on the embedded corpus.

The commands a user runs, in order: train an RMSNorm model (configs/<set>/rmsnorm.yaml,
PRETRAIN steps), `megadyt export --format hf`, then for each norm `megadyt import-hf --norm`
(which reports the validation loss before any training) and `megadyt train` for CONTINUE more
steps from the import. Two references with the same total tokens (PRETRAIN + CONTINUE steps):
the RMSNorm original continued the same way (imported without conversion: same new optimizer and
schedule), and the norm trained from scratch. Validation loss is the trainer's own (the same
samples for every run). Finished steps are reused, so an interrupted run continues.

    python benchmarks/norm_conversion.py [--set tiny] [--pretrain-steps 300]
        [--continue-steps 100] [--output benchmarks/results-conversion-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALIDATION = re.compile(r"step (\d+): validation loss ([\d.]+)")
CONVERTED = re.compile(r"rmsnorm original ([\d.]+), converted \w+ ([\d.]+)")


def megadyt(*args: str) -> str:
    """Run `python -m megadyt ARGS` from the repository root; its stdout (exit on failure)."""
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt", *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"megadyt {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def train(config: Path, run: Path, steps: int, eval_every: int) -> dict[int, float]:
    """Train (or finish) `run` to `steps`; step -> validation loss from its log."""
    log = run.with_suffix(".log")
    if not log.is_file():
        sets = [f"run.dir={run}", f"train.steps={steps}", f"train.eval_interval={eval_every}",
                f"train.save_interval={steps}", "train.log_interval=50"]  # fmt: skip
        out = megadyt("train", "--config", str(config), *[a for s in sets for a in ("--set", s)])
        log.write_text(out)
    return {int(s): float(v) for s, v in VALIDATION.findall(log.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="tiny", help="config directory under configs/")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--continue-steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--work", default=str(ROOT / "runs" / "norm-conversion"))
    parser.add_argument("--output", default="norm-conversion.json")
    args = parser.parse_args()
    work, configs = Path(args.work) / args.set, ROOT / "configs" / args.set
    work.mkdir(parents=True, exist_ok=True)
    pre, more, every = args.pretrain_steps, args.continue_steps, args.eval_every
    start = time.time()
    original = train(configs / "rmsnorm.yaml", work / "rmsnorm", pre, every)
    export = work / "rmsnorm-hf"
    if not export.exists():
        megadyt("export", "--format", "hf", "--checkpoint", str(work / "rmsnorm"),
                "--output", str(export), "--no-tokenizer")  # fmt: skip
    rows = {}
    for norm in ("rmsnorm", "dyt", "derf"):
        run = work / f"{norm}-from-rmsnorm"
        report = run.with_suffix(".import.log")
        if not report.is_file():
            convert = [] if norm == "rmsnorm" else ["--norm", norm]
            report.write_text(
                megadyt(
                    "import-hf",
                    "--config",
                    str(configs / f"{norm}.yaml"),
                    "--model",
                    str(export),
                    "--output",
                    str(run),
                    *convert,
                )
            )
        before = CONVERTED.search(report.read_text())
        curve = train(configs / f"{norm}.yaml", run, more, every)
        scratch = train(configs / f"{norm}.yaml", work / f"{norm}-scratch", pre + more, every)
        rows[norm] = {
            "converted_before_training": float(before.group(2)) if before else original[pre],
            "continued": curve,
            "from_scratch": scratch,
        }
    print(f"{args.set}: RMSNorm trained {pre} steps, validation loss {original[pre]:.4f}; then "
          f"{more} steps from the import (the tokens of {pre + more} from scratch)")  # fmt: skip
    print(f"{'norm':8} {'at import':>10} {'+' + str(more):>8} {'scratch':>8} {'vs orig':>8}")
    for norm, row in rows.items():
        end, scratch = row["continued"][more], row["from_scratch"][pre + more]
        print(f"{norm:8} {row['converted_before_training']:>10.4f} {end:>8.4f} {scratch:>8.4f} "
              f"{end - original[pre]:>+8.4f}")  # fmt: skip
    result = {
        "set": args.set, "pretrain_steps": pre, "continue_steps": more,
        "original_rmsnorm": original, "norms": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "seconds": time.time() - start,
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
