"""Peak memory of a training step with the chunked loss (`model.fused_loss=on`) and without it.

Runs the real `megadyt train` once per setting, each in a fresh process, on the same config
(default: ~100M parameters, 12 layers × 768, vocab 32,000, micro-batch 4 × 2048 tokens, where
the fp32 logits alone are 1 GB). The peak is the process's VmHWM as the trainer logs it at the
last step (`perf/memory_gb`, before the run's last save; on CUDA max_memory_allocated), set
beside `megadyt plan`'s estimate of the same config. The step time (median of the steps after
the first) comes along; on a shared machine read it as a rough figure.

    python benchmarks/loss_memory.py [--steps 2] [--output benchmarks/results-loss-memory-cpu.json]
    python benchmarks/loss_memory.py --set model.num_layers=2 ...   # shape overrides
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from megadyt.cli.main import add_override_argument  # noqa: E402

SHAPE_100M = [
    "model.num_layers=12", "model.hidden_size=768", "model.num_attention_heads=12",
    "model.ffn_hidden_size=2048", "model.vocab_size=32000", "model.seq_length=2048",
    "train.micro_batch_size=4", "train.global_batch_size=4", "parallel.zero_stage=0",
]  # fmt: skip
CONFIG = "configs/tiny/dyt.yaml"
GIB = 2**30


def overrides_for(setting: str, shape: list[str], steps: int, run_dir: Path) -> list[str]:
    return [
        *shape,
        f"model.fused_loss={setting}",
        f"train.steps={steps}",
        "train.log_interval=1",
        f"train.eval_interval={100 * steps}",
        f"train.save_interval={100 * steps}",
        f"run.dir={run_dir}",
    ]


def run_train(overrides: list[str]) -> dict:
    """One `megadyt train` in a fresh process; its per-step records from metrics.jsonl."""
    from megadyt.training.run.layout import RunDir

    sets = [arg for o in overrides for arg in ("--set", o)]
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt", "train", "--config", CONFIG, *sets],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    if proc.returncode:
        sys.exit(f"megadyt train failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("run.dir=")))
    records = [json.loads(x) for x in RunDir(run_dir).metrics.read_text().splitlines()]
    steps = [r for r in records if "perf/memory_gb" in r]
    return {
        "peak_gib": steps[-1]["perf/memory_gb"],
        "tokens_per_s": [r["tokens_per_s"] for r in steps],
        "wall_s": time.monotonic() - start,
    }


def planned_gib(overrides: list[str]) -> float:
    from megadyt.config import load_config
    from megadyt.planning.plan import make_plan

    cfg = load_config(str(ROOT / CONFIG), overrides)
    device = "gpu" if _on_cuda() else "cpu"
    return make_plan(cfg, nodes=1, gpus_per_node=1, device=device).memory.total / GIB


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--output", default="loss-memory.json")
    add_override_argument(parser, help="shape overrides, after the ~100M shape")
    args = parser.parse_args(argv)
    shape = [*SHAPE_100M, *args.overrides]
    scratch = Path(tempfile.mkdtemp(prefix="megadyt-loss-memory-"))
    rows = {}
    try:
        for setting in ("off", "on"):
            overrides = overrides_for(setting, shape, args.steps, scratch / setting)
            run = run_train(overrides)
            later = run["tokens_per_s"][1:] or run["tokens_per_s"]
            rows[setting] = {
                "peak_gib": run["peak_gib"],
                "planned_gib": planned_gib([o for o in overrides if "run.dir" not in o]),
                "tokens_per_s": statistics.median(later),
                "wall_s": run["wall_s"],
            }
            print(f"done: fused_loss={setting}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ratio = rows["on"]["peak_gib"] / rows["off"]["peak_gib"]
    speed = rows["on"]["tokens_per_s"] / rows["off"]["tokens_per_s"]
    print("| model.fused_loss | peak GiB | plan GiB | tokens/s |")
    print("|---|---:|---:|---:|")
    for setting, r in rows.items():
        print(f"| {setting} | {r['peak_gib']:.2f} | {r['planned_gib']:.2f} "
              f"| {r['tokens_per_s']:.0f} |")  # fmt: skip
    print(f"\npeak memory on/off: {ratio:.3f}x; tokens/s on/off: {speed:.3f}x")
    result = {
        "config": CONFIG, "overrides": shape, "steps": args.steps, "rows": rows,
        "peak_ratio_on_over_off": ratio, "speed_ratio_on_over_off": speed,
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "cuda": _on_cuda(), "load_average_at_end": os.getloadavg(),
        },
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
