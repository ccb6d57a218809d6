"""What a run reports, and the one writer of it.

`MetricsWriter` is the only code that writes a run's TensorBoard events and metrics.jsonl (rank 0;
other ranks hold a disabled writer, so their consoles stay quiet). `MetricsProcessor` turns a
window of steps into throughput figures: tokens/s, TFLOP/s per device, MFU and peak memory,
from what the hardware can do (`peak_tflops`) and has used (`memory_gb`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator

import torch

from megadyt.config.schema import Config
from megadyt.model.flops import flops_per_token
from megadyt.training.run.layout import RunDir

# Dense bf16 peak TFLOP/s per device (datasheets), for MFU when train.peak_tflops is not set.
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
UNKNOWN_GPU_PEAK_TFLOPS = 100.0


def peak_tflops(cfg: Config) -> float:
    """Per-device peak: from config, the GPU's datasheet, or a quick CPU matmul measurement."""
    if cfg.train.peak_tflops:
        return cfg.train.peak_tflops
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name:
                return value
        return UNKNOWN_GPU_PEAK_TFLOPS
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


def peak_rss_bytes() -> int:
    """This process's peak resident set since it started (Linux: VmHWM). Not getrusage's
    ru_maxrss, which Linux carries over from the pre-exec image: a run started from a large
    parent (a test session, a notebook) reported the parent's RSS as its own (0.7 GB more)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def memory_gb() -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, else the peak RSS."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return peak_rss_bytes() / 2**30


class MetricsWriter:
    """TensorBoard under the run's tb/, one JSON record per line in metrics.jsonl, the console."""

    def __init__(self, run: RunDir, enabled: bool, total_steps: int, run_name: str) -> None:
        self.enabled = enabled
        self.total_steps = total_steps
        self._start = time.perf_counter()
        self._writer = None
        self._jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # slow import: rank 0 only

            run.root.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(run.tensorboard))
            self._jsonl = open(run.metrics, "a")
            self._writer.add_text("run/name", run_name, 0)

    def _write(self, step: int, scalars: dict[str, float], record: dict) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._writer.flush()

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars of one step; in metrics.jsonl the `train/` prefix is dropped."""
        if not self.enabled:
            return
        short = {
            k.split("/", 1)[-1] if k.startswith("train/") else k: v for k, v in scalars.items()
        }
        self._write(step, scalars, {"step": step, **short})

    def event(self, step: int, name: str, scalars: dict[str, float], detail: str) -> None:
        """A reliability event (spike, rollback, skipped step): TensorBoard scalars, one JSON
        line `{"step", "event", ..., "detail"}` and a console line."""
        if not self.enabled:
            return
        self._write(step, scalars, {"step": step, "event": name, **scalars, "detail": detail})
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


class MetricsProcessor:
    """Throughput over the steps since the last log: time spent evaluating, saving or rolling
    back is excluded (`paused`), so tokens/s and MFU describe training alone."""

    def __init__(
        self, cfg: Config, world_size: int, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.tokens_per_step = cfg.tokens_per_step
        self.flops_per_token = flops_per_token(cfg.model)
        self.peak_tflops = peak_tflops(cfg)
        self.world_size = world_size
        self.clock = clock
        self.start_window()

    def start_window(self) -> None:
        """Begin measuring: at the start of the loop and after each log step's own work."""
        self._window_start, self._window_steps, self._paused = self.clock(), 0, 0.0

    def tokens_at(self, step: int) -> int:
        return step * self.tokens_per_step

    def step_done(self) -> None:
        self._window_steps += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self._paused += self.clock() - start

    def throughput(self) -> dict[str, float]:
        """The figures of the window so far (`start_window` begins the next one)."""
        elapsed = self.clock() - self._window_start - self._paused
        tokens_per_s = self.tokens_per_step * self._window_steps / elapsed
        tflops = tokens_per_s * self.flops_per_token / 1e12 / self.world_size
        return {
            "train/tokens_per_s": tokens_per_s,
            "perf/tflops_per_device": tflops,
            "perf/mfu": tflops / self.peak_tflops,
            "perf/memory_gb": memory_gb(),
        }
