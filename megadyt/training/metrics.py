"""What a run reports: TensorBoard under run.dir/tb, JSON lines in run.dir/metrics.jsonl, and a
progress line on rank 0's console. Also the model-FLOPs count behind TFLOP/s and MFU."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from megadyt.config.schema import Config
from megadyt.model.counting import count_parameters

# Dense bf16 peak FLOP/s per device, for MFU when train.peak_tflops is not set.
METRICS_FILE = "metrics.jsonl"  # one JSON record per log step or event, in run.dir

GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token: 6 × matmul parameters + causal-agnostic attention 12·L·s·d."""
    m = cfg.model
    counts = count_parameters(m)
    matmul_params = counts.attention + counts.mlp + counts.output
    return 6.0 * matmul_params + 12.0 * m.num_layers * m.seq_length * m.hidden_size


def peak_tflops(cfg: Config) -> float:
    """Per-device peak: from config, the GPU's datasheet, or a quick CPU matmul measurement."""
    if cfg.train.peak_tflops:
        return cfg.train.peak_tflops
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value
        return 100.0
    return cpu_matmul_tflops(torch.get_num_threads())


@functools.cache
def cpu_matmul_tflops(threads: int, size: int = 768, trials: int = 5, reps: int = 3) -> float:
    """This CPU's fp32 matmul TFLOP/s: the best of several short trials, since a shared machine
    slows some of them (a single average made MFU exceed 100%). `threads` (torch's current
    thread count) keys the cache: the figure depends on it."""
    a = torch.randn(size, size)
    a @ a
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * reps / best / 1e12


class MetricsLogger:
    """Rank 0 writes; other ranks hold a disabled logger (quiet consoles)."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, run_name: str) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self._start = time.perf_counter()
        self._writer = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))
            self._jsonl = open(run_dir / METRICS_FILE, "a")
            self._writer.add_text("run/name", run_name, 0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        record = {
            "step": step,
            **{k.split("/", 1)[-1] if k.startswith("train/") else k: v for k, v in scalars.items()},
        }
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._writer.flush()

    def event(self, step: int, name: str, scalars: dict[str, float], detail: str) -> None:
        """A reliability event (spike, rollback, skipped step): TensorBoard scalars, one JSON
        line `{"step", "event", ..., "detail"}` and a console line."""
        if not self.enabled:
            return
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        record = {"step": step, "event": name, **scalars, "detail": detail}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._writer.flush()
        print(f"step {step}: {detail}", flush=True)

    def progress(self, step: int, loss: float, tokens_per_s: float, steps_done_here: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._start
        remaining = (self.total_steps - step) * elapsed / max(1, steps_done_here)
        eta = (
            f"{int(remaining // 3600)}:{int(remaining % 3600 // 60):02d}:{int(remaining % 60):02d}"
        )
        print(
            f"step {step:>7}/{self.total_steps}  loss {loss:8.4f}  "
            f"{tokens_per_s:>10,.0f} tok/s  eta {eta}",
            file=sys.stdout,
            flush=True,
        )

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()


def memory_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except ImportError:  # pragma: no cover - non-Unix
        return float("nan")


def is_finite(x: float) -> bool:
    return math.isfinite(x)


def environ_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))
