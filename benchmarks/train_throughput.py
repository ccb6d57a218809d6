"""Training throughput of `megadyt train` on this machine, against a plain Hugging Face LLaMA.

Runs the tiny config and a ~100M-parameter config (rmsnorm, dyt, derf; `--sizes 1b` adds a
~1.1B one for a GPU) for a few steps each in a fresh process, single-process and under
`torch.distributed.run` (data parallel; ZeRO stage 0 by default, which keeps a whole optimizer
state on every rank as the baseline's DDP does; `--dp-zero-stage 1` measures what ZeRO-1's
sharding costs on top), reads the logged figures back from
metrics.jsonl, and times a `transformers` LlamaForCausalLM of the same shape, batch, optimizer
and process count (benchmarks/hf_baseline.py) in the same run.
The first step of every run is dropped as warm-up; figures are medians of per-step tokens/s.
Every process gets cpus // nproc torch threads (OMP_NUM_THREADS), so the total is the same.
DyT/Derf are reported as ratios to RMSNorm and megadyt as a ratio to HF, measured side by side,
since absolute numbers on shared machines are noisy (`--repeats` interleaves more rounds).
On CUDA both run in bf16 (megadyt: train.precision auto = DeepSpeed bf16; HF: autocast), and
each row records the peak allocated memory (megadyt: max of perf/memory_gb over the run,
torch.cuda.max_memory_allocated on CUDA, peak RSS on CPU; in GiB) for
benchmarks/plan_memory.py. Each run's directory (with its last-step checkpoint) is deleted once
read, so a 1B run's ~18 GB checkpoint does not pile up on disk.

`--compile on` runs megadyt with train.compile=on (each transformer layer compiled; the first,
dropped step compiles them; rows "dyt+compile"), `--compile both` adds those rows to the eager
ones, and `--hf-compile` adds HF with compiled decoder layers ("hf-llama+compile"). Every row is
compared with HF eager and with RMSNorm compiled the same way, all measured in the same run.

    python benchmarks/train_throughput.py [--steps 6] [--nproc 1 2] [--output bench-train.json]
    python benchmarks/train_throughput.py --sizes tiny 100m --nproc 1 2 --norms rmsnorm dyt \
        --compile both --repeats 2
    python benchmarks/train_throughput.py --sizes 100m 1b --norms rmsnorm dyt  # one GPU

Needs transformers: pip install -e '.[bench]'
"""

from __future__ import annotations

import argparse
import importlib.util
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

from megadyt.cli.main import add_override_argument
from megadyt.training.run.layout import RunDir

ROOT = Path(__file__).resolve().parent.parent
HF_SCRIPT = Path(__file__).resolve().parent / "hf_baseline.py"
NORMS = ("rmsnorm", "dyt", "derf")
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
    # ~1.1B parameters (1,147,234,350 with the 4096 vocab): TinyLlama's 22 layers × 2048 wide,
    # FFN 5632, here 16 heads of 128. `megadyt plan` (bf16, ZeRO 0, micro-batch 4): 53.2 GB of
    # 80, 0.15 s/step at MFU 0.4 on an H100; micro-batch 8 would need 80.4 GB.
    "1b": [
        "model.num_layers=22",
        "model.hidden_size=2048",
        "model.num_attention_heads=16",
        "model.ffn_hidden_size=5632",
        "model.seq_length=2048",
        "train.micro_batch_size=4",
        "train.global_batch_size=4",
    ],
}
DEFAULT_SIZES = ["tiny", "100m"]  # 1b is for a GPU: pass --sizes
# What computes attention in each implementation (for the report).
ATTENTION = {
    "megadyt": "megatron-core local spec with megadyt's SdpaDotProductAttention "
    "(model.attention_impl=sdpa: scaled_dot_product_attention, is_causal, no mask)",
    "hf": "transformers LlamaForCausalLM, attn_implementation='sdpa' (is_causal, no mask)",
}


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_process(nproc: int) -> int:
    return max(1, cpu_count() // nproc)


def launcher(nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]


def run_quiet(cmd: list[str], nproc: int) -> None:
    """Run `cmd` in the repo root with the thread budget; on failure show its output's tail."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads_per_process(nproc))}
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.returncode:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd)}\nfailed (exit {proc.returncode}):\n{tail}")


def scratch_dir() -> str | None:
    """Where the runs write: /dev/shm when it exists, so the last step's checkpoint (~18 GB at
    1b) is written at memory speed and does not count a slow disk against the GPU check's time
    limit; the runs' directories are deleted as soon as they are read."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


# Extra overrides from --set, applied to every run (megadyt and HF alike), e.g. a larger batch
# on a GPU, where the CPU-sized one measures launch overhead rather than the device.
EXTRA_OVERRIDES: list[str] = []
# ZeRO stage of the data-parallel runs (--dp-zero-stage): 0 is like for like with DDP.
DP_ZERO_STAGE = [0]


def common_overrides(size: str, steps: int, nproc: int, run_dir: Path) -> list[str]:
    """Shape, steps and logging; ZeRO stage 0 alone (nothing to shard), DP_ZERO_STAGE over 2+."""
    return [
        *SIZES[size],
        *EXTRA_OVERRIDES,
        f"train.steps={steps}",
        "train.log_interval=1",
        f"train.eval_interval={10 * steps}",
        f"train.save_interval={10 * steps}",
        f"parallel.zero_stage={0 if nproc == 1 else DP_ZERO_STAGE[0]}",
        f"run.dir={run_dir}",
    ]


def as_sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def megadyt_config(
    size: str, norm: str, steps: int, nproc: int, run_dir: Path, compiled: bool = False
):
    """(config path, overrides) of one megadyt run; plan_memory.py rebuilds it from these."""
    overrides = [*common_overrides(size, steps, nproc, run_dir), f"model.norm={norm}"]
    overrides.append(f"train.compile={'on' if compiled else 'off'}")
    return f"configs/tiny/{norm}.yaml", overrides


def variant(name: str, compiled: bool) -> str:
    """A row's name: the norm (or hf-llama), "+compile" when its layers are compiled."""
    return f"{name}+compile" if compiled else name


def run_megadyt(
    size: str, norm: str, steps: int, nproc: int, run_dir: Path, compiled: bool = False
) -> dict:
    """One `megadyt train` run; per-step figures from metrics.jsonl, warm-up step (and with it
    the compiling) dropped; the compile time from the run's "compiled" event."""
    config, overrides = megadyt_config(size, norm, steps, nproc, run_dir, compiled)
    sets = as_sets(overrides)
    start = time.monotonic()
    run_quiet([*launcher(nproc), "-m", "megadyt", "train", "--config", config, *sets], nproc)
    wall_s = time.monotonic() - start
    records = [json.loads(x) for x in RunDir(run_dir).metrics.read_text().splitlines()]
    shutil.rmtree(run_dir, ignore_errors=True)  # the last step's checkpoint: ~18 GB at 1b
    compile_s = [r["compile/seconds"] for r in records if r.get("event") == "compiled"]
    records = [r for r in records if "tokens_per_s" in r]
    memory = [r["perf/memory_gb"] for r in records if "perf/memory_gb" in r]
    records = records[1:]
    return {
        "tokens_per_s": [r["tokens_per_s"] for r in records],
        "tflops_per_device": [r["perf/tflops_per_device"] for r in records],
        "mfu": [r["perf/mfu"] for r in records],
        "max_memory_gib": max(memory) if memory else None,  # the peak over the whole run
        "wall_s": wall_s,  # the whole process: start-up, steps, last save
        "compile_s": compile_s[0] if compile_s else None,
        "info": {
            "config": config,
            "overrides": [o for o in overrides if not o.startswith("run.dir=")],
        },
    }


def run_hf(size: str, steps: int, nproc: int, run_dir: Path, compiled: bool = False) -> dict:
    """One HF baseline run of the same shape and batch; same per-step figures."""
    out = run_dir.with_suffix(".json")
    sets = as_sets(common_overrides(size, steps, nproc, run_dir))
    cmd = [*launcher(nproc), str(HF_SCRIPT), "--config", "configs/tiny/rmsnorm.yaml", *sets]
    cmd += ["--compile"] if compiled else []
    start = time.monotonic()
    run_quiet([*cmd, "--steps", str(steps), "--output", str(out)], nproc)
    wall_s = time.monotonic() - start
    info = json.loads(out.read_text())
    tps = [info["tokens_per_step"] / s for s in info["seconds"][1:]]
    tflops = [x * info["flops_per_token"] / 1e12 / nproc for x in tps]
    return {
        "tokens_per_s": tps,
        "tflops_per_device": tflops,
        "mfu": [x / info["peak_tflops"] for x in tflops],
        "max_memory_gib": info.get("max_memory_gib"),
        "wall_s": wall_s,
        "compile_s": None,
        "info": {k: info[k] for k in ("transformers", "threads", "params", "dtype", "attention")},
    }


def summarise(key: tuple[str, str, int], runs: list[dict]) -> dict:
    """Pool the per-step figures of all repeats of one (size, variant, nproc); medians."""
    size, name, nproc = key
    pooled = {
        k: [x for r in runs for x in r[k]] for k in ("tokens_per_s", "tflops_per_device", "mfu")
    }
    compile_s = [r["compile_s"] for r in runs if r.get("compile_s") is not None]
    row = {
        "size": size,
        "name": name,
        "norm": name.removesuffix("+compile"),
        "compiled": name.endswith("+compile"),
        "compile_s": statistics.median(compile_s) if compile_s else None,
        "nproc": nproc,
        "threads_per_process": threads_per_process(nproc),
        "tokens_per_s": statistics.median(pooled["tokens_per_s"]),
        "best_tokens_per_s": max(pooled["tokens_per_s"]),
        "tflops_per_device": statistics.median(pooled["tflops_per_device"]),
        "mfu": statistics.median(pooled["mfu"]),
        "steps_tokens_per_s": pooled["tokens_per_s"],
    }
    memory = [r["max_memory_gib"] for r in runs if r.get("max_memory_gib") is not None]
    row["max_memory_gib"] = max(memory) if memory else None
    row["wall_s"] = [r["wall_s"] for r in runs]
    if "info" in runs[0]:
        row.update(runs[0]["info"])
    return row


def machine_info(hf_version: str) -> dict:
    import deepspeed
    import megatron.core
    import torch

    import megadyt  # noqa: F401  (filters megatron-core's import-time warnings)

    cuda = torch.cuda.is_available()
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "cpus": cpu_count(),
        "torch_threads_default": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "transformers": hf_version,
        "deepspeed": deepspeed.__version__,
        "megatron_core": megatron.core.__version__,
        "dtype": "bf16 (megadyt: DeepSpeed bf16; HF: autocast)" if cuda else "fp32",
        "attention": ATTENTION,
        "data": "megadyt: built-in corpus via megadyt's GPTDataset; HF: random token ids",
    }


def report_run(tag: str, name: str, run: dict) -> None:
    """One line per finished run, so a run cut off by a time limit still leaves its figures."""
    mfu = statistics.median(run["mfu"])
    print(
        f"{tag}: {name}: {statistics.median(run['tokens_per_s']):,.0f} tok/s, MFU {mfu:.1%}, "
        f"{run['wall_s']:.0f} s wall",
        file=sys.stderr,
        flush=True,
    )


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}x" if b else "-"


def print_table(rows: list[dict]) -> None:
    print(
        "| size | variant | procs | tokens/s | vs rmsnorm | vs HF | TFLOP/s/device | MFU "
        "| peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mem = r.get("max_memory_gib")
        print(
            f"| {r['size']} | {r['name']} | {r['nproc']}×{r['threads_per_process']}t | "
            f"{r['tokens_per_s']:,.0f} | {ratio(r['tokens_per_s'], r.get('rmsnorm_tps'))} | "
            f"{ratio(r['tokens_per_s'], r['hf_tps'])} | {r['tflops_per_device']:.3f} | "
            f"{r['mfu']:.1%} | {'-' if mem is None else f'{mem:.2f}'} |"
        )


def measure(args, modes: list[bool], hf_modes: list[bool]) -> dict:
    """Every run of every round: {(size, variant, nproc): [run per repeat]}."""
    runs: dict[tuple[str, str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(dir=scratch_dir()) as tmp:
        for size in args.sizes:
            for nproc in args.nproc:
                for rep in range(args.repeats):
                    # HF first, then the norms: each round sees the machine in a similar state
                    tag = f"{size}-{nproc}p-{rep}"
                    jobs = [(variant("hf-llama", c), None, c) for c in hf_modes]
                    jobs += [(variant(n, c), n, c) for c in modes for n in args.norms]
                    for name, norm, compiled in jobs:
                        print(f"{tag}: {name}", file=sys.stderr, flush=True)
                        run_dir = Path(tmp) / f"{tag}-{name}"
                        if norm is None:
                            run = run_hf(size, args.steps, nproc, run_dir, compiled)
                        else:
                            run = run_megadyt(size, norm, args.steps, nproc, run_dir, compiled)
                        report_run(tag, name, run)
                        runs.setdefault((size, name, nproc), []).append(run)
    return runs


def add_ratios(rows: list[dict]) -> None:
    """Each row against HF eager and against RMSNorm compiled the same way, same size and
    process count (measured in the same run)."""
    by_key = {(r["size"], r["name"], r["nproc"]): r["tokens_per_s"] for r in rows}
    for r in rows:
        r["hf_tps"] = by_key[(r["size"], "hf-llama", r["nproc"])]
        r["ratio_vs_hf"] = r["tokens_per_s"] / r["hf_tps"]
        rmsnorm = (r["size"], variant("rmsnorm", r["compiled"]), r["nproc"])
        if r["norm"] != "hf-llama" and rmsnorm in by_key:
            r["rmsnorm_tps"] = by_key[rmsnorm]
            r["ratio_vs_rmsnorm"] = r["tokens_per_s"] / r["rmsnorm_tps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, choices=list(SIZES))
    parser.add_argument("--norms", nargs="+", default=list(NORMS), choices=NORMS)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds, pooled")
    parser.add_argument("--output", default="bench-train.json")
    add_override_argument(
        parser, help="config override for every run, megadyt and HF (after the size's own)"
    )
    parser.add_argument(
        "--dp-zero-stage",
        type=int,
        default=0,
        choices=[0, 1, 2, 3],
        help="ZeRO stage of the runs with 2+ processes (0: replicated, as the baseline's DDP)",
    )
    parser.add_argument(
        "--compile",
        choices=["off", "on", "both"],
        default="off",
        help="megadyt's train.compile: eager, compiled layers, or both side by side",
    )
    parser.add_argument(
        "--hf-compile", action="store_true", help="also time HF with compiled decoder layers"
    )
    args = parser.parse_args()
    EXTRA_OVERRIDES.extend(args.overrides)
    DP_ZERO_STAGE[0] = args.dp_zero_stage
    if importlib.util.find_spec("transformers") is None:
        raise SystemExit("transformers is missing for the HF baseline: pip install -e '.[bench]'")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    hf_modes = [False, True] if args.hf_compile else [False]
    runs = measure(args, modes, hf_modes)
    rows = [summarise(key, value) for key, value in runs.items()]
    add_ratios(rows)
    hf_version = next(r["transformers"] for r in rows if r["norm"] == "hf-llama")
    machine = machine_info(hf_version)
    print(
        f"machine: {machine['device']}, {machine['cpus']} cpus, torch {machine['torch']}, "
        f"transformers {hf_version}; procs×threads per process; HF = {ATTENTION['hf']}"
    )
    print_table(rows)
    report = {
        "machine": machine,
        "steps": args.steps,
        "repeats": args.repeats,
        "overrides": args.overrides,
        "dp_zero_stage": args.dp_zero_stage,
        "compile": args.compile,
        "hf_compile": args.hf_compile,
        "rows": rows,
    }
    Path(args.output).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
