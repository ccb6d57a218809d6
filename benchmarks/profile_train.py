"""Where a short `megadyt train` run spends its time, per norm: torch.profiler over the whole run.

Throughput tables say *that* DyT and RMSNorm (or megadyt and HF) differ; this says *where*. Each
norm's run goes in this process under torch.profiler (CPU, plus CUDA where present) with the
same config train_throughput.py builds, and the script prints the operators that took the most
device time (self time; CPU time without a GPU), summed over the run and divided by its steps,
and writes them as JSON. Start-up and the last save are inside the profile too, so read the
per-step figures of the kernels that run every step (matmuls, attention, norms), and compare
the total device time per step with the wall time per step: far less device than wall time
means the run is bound by launches and Python, not by the GPU.

    python benchmarks/profile_train.py --size 100m --norms rmsnorm dyt --steps 4 [--set k=v]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # megadyt, and train_throughput as a module

import torch  # noqa: E402
import train_throughput  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from megadyt.cli.main import add_override_argument  # noqa: E402
from megadyt.cli.main import main as megadyt_main  # noqa: E402

TOP = 15


def profile_run(size: str, norm: str, steps: int, run_dir: Path) -> dict:
    """Profile one whole `megadyt train` run; the top operators by self time, per step."""
    config, overrides = train_throughput.megadyt_config(size, norm, steps, 1, run_dir)
    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    start = time.monotonic()
    with profile(activities=activities) as prof:
        rc = megadyt_main(["train", "--config", config, *train_throughput.as_sets(overrides)])
    wall_s = time.monotonic() - start
    if rc:
        raise SystemExit(f"megadyt train ({norm}) failed with exit {rc}")
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:TOP]
    return {
        "norm": norm,
        "wall_s": wall_s,
        "timed_by": key,
        "total_ms_per_step": sum(getattr(e, key) for e in events) / 1e3 / steps,
        "top": [
            {
                "op": e.key,
                "ms_per_step": getattr(e, key) / 1e3 / steps,
                "calls_per_step": e.count / steps,
            }
            for e in rows
        ],
    }


def print_profile(result: dict) -> None:
    print(
        f"\n{result['norm']}: {result['timed_by']} {result['total_ms_per_step']:.1f} ms per step "
        f"(whole run {result['wall_s']:.1f} s wall, start-up and save included)"
    )
    print("| op | ms/step | calls/step |")
    print("|---|---|---|")
    for row in result["top"]:
        print(f"| {row['op'][:60]} | {row['ms_per_step']:.2f} | {row['calls_per_step']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="100m", choices=list(train_throughput.SIZES))
    parser.add_argument("--norms", nargs="+", default=["rmsnorm", "dyt"])
    parser.add_argument("--steps", type=int, default=4)
    add_override_argument(parser, help="config override for every run")
    parser.add_argument("--output", default="profile-train.json")
    args = parser.parse_args()
    train_throughput.EXTRA_OVERRIDES.extend(args.overrides)
    results = []
    with tempfile.TemporaryDirectory(dir=train_throughput.scratch_dir()) as tmp:
        for norm in args.norms:
            result = profile_run(args.size, norm, args.steps, Path(tmp) / norm)
            print_profile(result)
            results.append(result)
    report = {"size": args.size, "steps": args.steps, "overrides": args.overrides}
    Path(args.output).write_text(json.dumps({**report, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
