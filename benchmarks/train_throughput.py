"""Training throughput of `megadyt train` on this machine: tokens/s, TFLOP/s and MFU.

Runs the tiny config and a ~100M-parameter config (rmsnorm, dyt, derf) for a few steps each in a
fresh process, reads the logged figures back from metrics.jsonl (first step excluded as warm-up),
prints a table and writes JSON. DyT/Derf are reported as a ratio to RMSNorm measured in the same
run, since absolute numbers on shared machines are noisy.

    python benchmarks/train_throughput.py [--steps 6] [--nproc 1] [--output bench-train.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    "tiny": [],
    # ~100M parameters: 12 layers × 768 wide, LLaMA-shaped, vocab 4096 (built-in tokenizer)
    "100m": [
        "model.num_layers=12",
        "model.hidden_size=768",
        "model.num_attention_heads=12",
        "model.ffn_hidden_size=2048",
        "model.seq_length=512",
        "train.micro_batch_size=2",
        "train.global_batch_size=4",
    ],
}


def run_one(size: str, norm: str, steps: int, nproc: int, workdir: Path) -> dict:
    run_dir = workdir / f"{size}-{norm}"
    overrides = [
        *SIZES[size],
        f"model.norm={norm}",
        f"train.steps={steps}",
        "train.log_interval=1",
        f"train.eval_interval={10 * steps}",
        f"train.save_interval={10 * steps}",
        "parallel.zero_stage=1",
        f"run.dir={run_dir}",
    ]
    sets = [arg for o in overrides for arg in ("--set", o)]
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "megadyt", "train", "--config", f"configs/tiny/{norm}.yaml", *sets]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "tokens_per_s" in r][1:]  # drop the warm-up step
    return {
        "size": size,
        "norm": norm,
        "nproc": nproc,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in records),
        "tflops_per_device": statistics.median(r["perf/tflops_per_device"] for r in records),
        "mfu": statistics.median(r["perf/mfu"] for r in records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--output", default="bench-train.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for norm in ("rmsnorm", "dyt", "derf"):
                rows.append(run_one(size, norm, args.steps, args.nproc, Path(tmp)))
    baseline = {r["size"]: r["tokens_per_s"] for r in rows if r["norm"] == "rmsnorm"}
    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
    }
    print(f"machine: {machine['device']}, {machine['cpus']} threads, torch {machine['torch']}")
    print("| size | norm | procs | tokens/s | vs rmsnorm | TFLOP/s/device | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_vs_rmsnorm"] = r["tokens_per_s"] / baseline[r["size"]]
        print(
            f"| {r['size']} | {r['norm']} | {r['nproc']} | {r['tokens_per_s']:,.0f} | "
            f"{r['ratio_vs_rmsnorm']:.2f}x | {r['tflops_per_device']:.3f} | {r['mfu']:.1%} |"
        )
    Path(args.output).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
