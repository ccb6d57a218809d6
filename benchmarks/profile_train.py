"""Where a training step spends its time, per norm: torch.profiler over training steps only.

Throughput tables say *that* DyT and RMSNorm (or megadyt and HF) differ; this says *where*. Each
norm's trainer is built in this process with train_throughput.py's config of the size
(benchmarks/train_steps.py); the profiler skips the first step (compiling, when train.compile
is on) and a warm-up step, then records two. It prints the operators and kernels with the most
self time per step (device time on CUDA, CPU time without a GPU) and writes them as JSON.
Compare the total device time per step with the wall time per step: far less device than wall
time means the step is bound by launches and Python, not by the GPU.

    python benchmarks/profile_train.py --size 100m --norms rmsnorm dyt --compile on [--set k=v]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # megadyt, and the benchmark modules

import train_steps  # noqa: E402
import train_throughput  # noqa: E402

from megadyt.cli.main import add_override_argument  # noqa: E402

TOP = 15


def print_profile(result: dict) -> None:
    print(
        f"\n{result['norm']} (compile {result['compiled']}): {result['timed_by']} "
        f"{result['total_ms_per_step']:.1f} ms per step, {result['wall_ms_per_step']:.1f} ms wall"
    )
    print("| op | ms/step | calls/step |")
    print("|---|---|---|")
    for row in result["top"]:
        print(f"| {row['op'][:60]} | {row['ms_per_step']:.2f} | {row['calls_per_step']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="100m", choices=list(train_throughput.SIZES))
    parser.add_argument("--norms", nargs="+", default=["rmsnorm", "dyt"])
    parser.add_argument("--compile", choices=["on", "off"], default="off")
    add_override_argument(parser, help="config override for every run")
    parser.add_argument("--output", default="profile-train.json")
    args = parser.parse_args()
    results = []
    for norm in args.norms:
        cfg = train_steps.megadyt_config(
            args.size, norm, args.compile == "on", 4, extra=args.overrides
        )
        result = train_steps.profile_steps(cfg, TOP)
        train_steps.release()
        print_profile(result)
        results.append(result)
    report = {"size": args.size, "compile": args.compile, "overrides": args.overrides}
    Path(args.output).write_text(json.dumps({**report, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
