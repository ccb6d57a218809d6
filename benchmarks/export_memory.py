"""Peak memory of `megadyt export --format hf`, which streams tensor by tensor.

Builds a model of the given shape (default: 1.1B parameters, TinyLlama's shape), writes it as a TP=2
weights-only checkpoint (`training.checkpoint.initial`, what `import-hf` writes), then runs the real
CLI export as a child process and samples its /proc status every 20 ms: anonymous memory (what the
export allocates) and file-backed memory (pages of the memory-mapped checkpoint, page cache the
kernel can drop) are reported apart. The `.pt` export, which materialises the whole merged state,
runs on the same checkpoint as the reference.

    python benchmarks/export_memory.py [--shard-gb 0.5] [--set model.num_layers=22 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from megadyt.cli.main import add_override_argument  # noqa: E402

SHAPE_1B = [
    "model.num_layers=22", "model.hidden_size=2048", "model.ffn_hidden_size=5632",
    "model.num_attention_heads=32", "model.num_query_groups=4", "model.vocab_size=32000",
    "model.seq_length=2048", "parallel.tp=2",
]  # fmt: skip


def write_checkpoint(overrides: list[str], run: Path) -> int:
    """The model as a weights-only TP checkpoint at `run` (in this process); its bytes."""
    from megadyt.config import load_config
    from megadyt.model import build_model
    from megadyt.parallel.distributed import destroy_distributed, init_distributed
    from megadyt.parallel.tp_shards import tp_layout
    from megadyt.training.checkpoint.initial import write_initial_run

    cfg = load_config(ROOT / "configs/tiny/dyt.yaml", [*overrides, f"run.dir={run}"])
    init_distributed(tp=1)
    single = load_config(ROOT / "configs/tiny/dyt.yaml", [*overrides, "parallel.tp=1"])
    model = build_model(single)
    state = {n: p.detach() for n, p in model.named_parameters()}
    write_initial_run(run, cfg, state, tp_layout(model), {"source": "export_memory benchmark"})
    destroy_distributed()
    return sum(t.numel() * t.element_size() for t in state.values())


def _status(pid: int) -> dict[str, int]:
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
    return fields


def measure(args: list[str]) -> dict:
    """Run `python -m megadyt ARGS`; peak VmRSS / RssAnon / RssFile sampled every 20 ms."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "megadyt", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        try:
            for key, value in _status(proc.pid).items():
                peaks[key] = max(peaks[key], value)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"megadyt {' '.join(args)} failed:\n{err[-3000:]}")
    return {**{k.lower(): v for k, v in peaks.items()}, "seconds": time.perf_counter() - start,
            "stdout": out.strip().splitlines()[-1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shard-gb", type=float, default=0.5)
    parser.add_argument("--work", default="/tmp/megadyt-export-memory")
    parser.add_argument("--output", default="export-memory.json")
    add_override_argument(parser, help="model shape overrides (default: the 1.1B shape)")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model_bytes = write_checkpoint(args.overrides or SHAPE_1B, work / "run")
    streamed = measure(["export", "--format", "hf", "--checkpoint", str(work / "run"),
                        "--output", str(work / "hf"), "--no-tokenizer",
                        "--max-shard-size", str(args.shard_gb)])  # fmt: skip
    in_memory = measure(["export", "--checkpoint", str(work / "run"),
                         "--output", str(work / "model.pt")])  # fmt: skip
    gb = 1e9
    print(f"model: {model_bytes / gb:.2f} GB of fp32 weights, saved as 2 TP shards")
    print(f"{'export':22} {'peak RSS':>9} {'anon':>7} {'file':>7} {'time':>7}")
    for name, row in (("hf, streamed", streamed), ("megadyt .pt, merged", in_memory)):
        print(f"{name:22} {row['vmrss'] / gb:>8.2f}G {row['rssanon'] / gb:>6.2f}G "
              f"{row['rssfile'] / gb:>6.2f}G {row['seconds']:>6.1f}s")  # fmt: skip
    result = {
        "model_bytes": model_bytes, "shard_gb": args.shard_gb, "hf_streamed": streamed,
        "pt_merged": in_memory, "shape": args.overrides or SHAPE_1B,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
