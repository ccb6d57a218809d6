"""What the hardware can do and has used: the peak FLOP/s behind MFU, and peak memory."""

from __future__ import annotations

import functools
import resource
import time

import torch

from megadyt.config.schema import Config

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
