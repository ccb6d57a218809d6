"""`megadyt plan`'s memory per device against what train_throughput.py measured.

For every megadyt row of one or more train_throughput.py JSON files, rebuilds the exact config of
that run (the row's `config` and `overrides`; older files without them: rebuilt from the size,
norm, steps and process count with train_throughput.py's current SIZES), plans it with
`make_plan` (the API behind `megadyt plan`) on 1 node × nproc devices, and sets the prediction
beside the measured peak (`max_memory_gib`: the max of perf/memory_gb over the run).

What is compared: on CUDA the measured figure is torch.cuda.max_memory_allocated, which leaves
out the CUDA context, NCCL and cuBLAS workspaces, so the plan's total minus its runtime constant
(GPU_RUNTIME_BYTES, 3 GB) is the comparable prediction; on CPU the measured figure is the peak
RSS, which the plan's total (with its CPU import baseline) models whole. All figures in GB (1e9
bytes); ratio = measured / comparable prediction (1.0 = exact, < 1 = the plan is conservative).

    python benchmarks/plan_memory.py bench-train.json [more.json ...] [--output plan-memory.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # megadyt, and train_throughput as a module

from megadyt.config import load_config  # noqa: E402
from megadyt.planning.memory import GB, GPU_RUNTIME_BYTES  # noqa: E402
from megadyt.planning.plan import make_plan  # noqa: E402

GIB = 2**30


def run_config(row: dict, steps: int) -> tuple[str, list[str], bool]:
    """(config path, overrides, rebuilt) of the megadyt run behind `row`."""
    if "config" in row and "overrides" in row:
        return row["config"], list(row["overrides"]), False
    import train_throughput

    config, overrides = train_throughput.megadyt_config(
        row["size"], row["norm"], steps, row["nproc"], Path("unused")
    )
    return config, [o for o in overrides if not o.startswith("run.dir=")], True


def compare(path: Path, gpu_memory_gb: float) -> list[dict]:
    """One comparison per megadyt row of a train_throughput.py JSON file."""
    report = json.loads(path.read_text())
    device = "cpu" if report["machine"]["device"] == "cpu" else "gpu"
    out = []
    for row in report["rows"]:
        if row["norm"] == "hf-llama":
            continue
        config, overrides, rebuilt = run_config(row, report["steps"])
        cfg = load_config(str(HERE.parent / config), overrides)
        plan = make_plan(
            cfg, nodes=1, gpus_per_node=row["nproc"], gpu_memory_gb=gpu_memory_gb, device=device
        )
        total = plan.memory.total
        comparable = total - GPU_RUNTIME_BYTES if device == "gpu" else total
        gib = row.get("max_memory_gib")
        measured = None if gib is None else gib * GIB / GB
        out.append(
            {
                "file": str(path),
                "device": report["machine"]["device"],
                "size": row["size"],
                "norm": row["norm"],
                "nproc": row["nproc"],
                "params": plan.params_total,
                "micro_batch_size": plan.micro_batch_size,
                "precision": plan.settings["precision"],
                "zero_stage": plan.settings["zero_stage"],
                "predicted_gb": plan.memory.as_gb(),
                "predicted_total_gb": total / GB,
                "predicted_comparable_gb": comparable / GB,
                "measured_gb": measured,
                "ratio": None if measured is None else measured / (comparable / GB),
                "config_rebuilt": rebuilt,
            }
        )
    return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(rows: list[dict]) -> None:
    print("| device | size | norm | procs | predicted GB | measured GB | ratio |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in rows:
        pred = fmt(r["predicted_comparable_gb"])
        if r["predicted_comparable_gb"] != r["predicted_total_gb"]:
            pred += f" ({fmt(r['predicted_total_gb'])} with runtime)"
        print(
            f"| {r['device']} | {r['size']} | {r['norm']} | {r['nproc']} | {pred} "
            f"| {fmt(r['measured_gb'])} | {fmt(r['ratio'])} |"
        )
    if any(r["measured_gb"] is None for r in rows):
        print("\n'-': the file has no max_memory_gib (written before train_throughput.py had it)")
    if any(r["config_rebuilt"] for r in rows):
        print("config rebuilt from size/norm/steps/nproc for rows without `overrides`")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="train_throughput.py JSON file(s)")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="for the plan's fit")
    parser.add_argument("--output", default="plan-memory.json")
    args = parser.parse_args(argv)
    rows = [r for path in args.results for r in compare(path, args.gpu_memory_gb)]
    print_table(rows)
    Path(args.output).write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
