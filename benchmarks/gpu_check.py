"""The GPU check's driver: every measurement in one process, ordered by what decides the most.

A lent GPU machine comes for 15 minutes, so the whole check (benchmarks/gpu_check.sh: the
install, then this) must end within 8. One process pays imports, CUDA and NCCL once, then runs
the stages below; each writes OUT/<stage>.json the moment it ends and runs under its own time
guard (SIGALRM), so an overrun stage is cut and the next one still runs. OUT/summary.md is
rewritten after every stage.

  kernels    benchmarks/norms.py: DyT/Derf Triton kernels, torch's rms_norm and Liger-Kernel's
             DyT/RMSNorm (when importable), forward and backward, against the HBM floor
  train      ~1.1B, bf16: HF LlamaForCausalLM eager and compiled (each decoder layer), megadyt
             rmsnorm/dyt/derf eager and compiled (train.compile); tokens/s, ratio to HF eager,
             MFU, compile time, peak memory. The model is rebuilt per configuration
             (benchmarks/train_steps.py); configurations are ordered by what the targets need
             first and each has its own guard inside the stage's
  profile    torch.profiler over training steps only (compiled rmsnorm and dyt): top kernels
  memory     `megadyt plan`'s memory against the peaks the train stage measured
  gpu-tests  pytest -m gpu, in a child process, with whatever time the check has left

    python benchmarks/gpu_check.py --out gpu-check            # on the GPU
    python benchmarks/gpu_check.py --dry-run                  # the plan and its time budget
    python benchmarks/gpu_check.py --smoke --out /tmp/smoke   # every stage at toy size on CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import gpu_stages  # noqa: E402
from gpu_stages import Guards, StageTimeout  # noqa: E402

TOTAL_BUDGET_S = 8 * 60  # install included
INSTALL_S = 60  # benchmarks/gpu_install.sh, run by gpu_check.sh before this driver
START_S = 20  # imports, CUDA and NCCL start-up of this process
# (stage, seconds on one H100/H200); each stage's guard
STAGES = [("kernels", 40), ("train", 200), ("profile", 35), ("memory", 5), ("gpu-tests", 120)]
SMOKE_STAGE_S = 600  # at toy size on a CPU nothing is near its guard; the guards still run
FILES = [
    "benchmarks/gpu_install.sh",
    "benchmarks/norms.py",
    "benchmarks/plan_memory.py",
    "benchmarks/train_steps.py",
    "benchmarks/hf_baseline.py",
    *gpu_stages.GPU_TESTS,
]


def plan(smoke: bool, budgets: dict[str, float]) -> list[tuple[str, float]]:
    stages = [(name, budgets.get(name, SMOKE_STAGE_S if smoke else s)) for name, s in STAGES]
    return stages


def print_plan(stages: list[tuple[str, float]]) -> int:
    """The plan with its time budget; exit status 2 when it exceeds the total or a file the
    stages need is missing."""
    rows = [("install", INSTALL_S, "benchmarks/gpu_install.sh (run by gpu_check.sh)")]
    rows.append(("start-up", START_S, "imports, CUDA, NCCL (once)"))
    rows += [(name, s, gpu_stages.DESCRIPTIONS[name]) for name, s in stages]
    for name, seconds, what in rows:
        print(f"{name:<10} {seconds:>5.0f} s  {what}")
        if name == "train":
            for config, config_s in gpu_stages.TRAIN_CONFIGS:
                print(f"{'':<10} {config_s:>5.0f} s    {config}")
    total = sum(s for _, s, _ in rows)
    print(f"{'total':<10} {total:>5.0f} s  of {TOTAL_BUDGET_S} s")
    problems = [f"missing: {f}" for f in FILES if not (ROOT / f).is_file()]
    if total > TOTAL_BUDGET_S:
        problems.append(f"over budget: {total:.0f} s > {TOTAL_BUDGET_S} s")
    configs_s = sum(s for _, s in gpu_stages.TRAIN_CONFIGS)
    if configs_s > dict(stages)["train"]:
        problems.append(f"train configurations need {configs_s} s > the stage's guard")
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 2 if problems else 0


def write_summary(out: Path, records: list[dict]) -> None:
    lines = ["# GPU check", "", f"device: {gpu_stages.device_name()}", ""]
    lines += ["| stage | status | seconds | guard |", "|---|---|---:|---:|"]
    lines += [
        f"| {r['stage']} | {r['status']} | {r['seconds']:.0f} | {r['guard_s']:.0f} |"
        for r in records
    ]
    for r in records:
        lines += ["", f"## {r['stage']}", "", *r.get("table", [])]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def run_stage(name: str, seconds: float, guards: Guards, ctx: gpu_stages.Context) -> dict:
    """Run one stage under its guard; its JSON (figures, or why it stopped) goes out at once."""
    start = time.monotonic()
    result: dict = {}
    with guards.guard(seconds):
        try:
            result = gpu_stages.STAGE_FUNCTIONS[name](ctx, guards)
            status = result.pop("status", "ok")
        except StageTimeout as exc:
            status = f"timed out ({exc})"
        except Exception as exc:  # one stage failing must not stop the others
            status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            result["error"] = repr(exc)
    record = {"stage": name, "status": status, "seconds": time.monotonic() - start}
    record["guard_s"] = seconds
    (ctx.out / f"{name}.json").write_text(json.dumps({**record, **result}, indent=2) + "\n")
    print(f"gpu_check: {name:<10} {status} in {record['seconds']:.0f} s", flush=True)
    return {**record, "table": result.get("table", [])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--smoke", action="store_true", help="every stage at toy size (CPU)")
    parser.add_argument("--stages", nargs="+", choices=[s for s, _ in STAGES])
    parser.add_argument(
        "--budget", action="append", default=[], metavar="STAGE=SECONDS",
        help="override a stage's guard",
    )  # fmt: skip
    parser.add_argument(
        "--seconds-left", type=float, default=None,
        help="what the whole check has left (gpu_check.sh passes 8 min minus the install)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    budgets = {k: float(v) for k, v in (item.split("=", 1) for item in args.budget)}
    stages = plan(args.smoke, budgets)
    if args.dry_run:
        return print_plan(stages)
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + (args.seconds_left or TOTAL_BUDGET_S - INSTALL_S)
    guards = Guards()
    ctx = gpu_stages.Context.start(args.out, args.smoke)
    records = []
    for name, seconds in stages:
        if args.stages and name not in args.stages:
            continue
        if name == "gpu-tests" and not args.smoke:  # the last stage: whatever the check has left
            seconds = max(deadline - time.monotonic(), 1.0)
        records.append(run_stage(name, seconds, guards, ctx))
        write_summary(args.out, records)
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
