"""Timing a GPU call two ways: as the GPU runs it, and as its kernels alone take.

`wall_times` (triton.testing.do_bench) is the time from before the call's first kernel to after
its last one, with the L2 cache flushed before every call; it includes any gap in which the GPU
waits for Python to launch the next kernel. `kernel_times` (torch.profiler) is the sum of the
durations of the kernels the call launched, the same flush excluded: what the kernels achieve,
whatever the launch overhead. For a norm at 4096 × 4096 the two differ by tens of µs, as much
as the HBM floor itself (~17 µs forward in bf16 on an H200), so both are reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

FLUSH_BYTES = 256 * 2**20  # larger than any GPU's L2 (H200: 60 MB)


def wall_times(fn: Callable[[], object], grads: list[torch.Tensor]) -> list[float]:
    """Seconds per call of `fn` on CUDA by triton.testing.do_bench: the L2 flushed before every
    call (a 4096x4096 bf16 input would otherwise stay in the H200's 60 MB L2), each call timed
    with CUDA events while the flush keeps the GPU busy, so launch latency is mostly hidden."""
    from triton.testing import do_bench

    ms = do_bench(fn, warmup=10, rep=40, grad_to_none=grads, return_mode="all")
    return [t / 1e3 for t in ms]


def _kernels(activity_events) -> list[tuple[str, float]]:
    """(name, µs) of each GPU kernel, memset or copy the profiler saw, in start order."""
    device = [e for e in activity_events if e.device_type == torch.autograd.DeviceType.CUDA]
    device.sort(key=lambda e: e.time_range.start)
    return [(e.name, e.time_range.elapsed_us()) for e in device]


def _profile(body: Callable[[], None]):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        body()
        torch.cuda.synchronize()
    return _kernels(prof.events())


def kernel_times(
    fn: Callable[[], object], grads: list[torch.Tensor], reps: int = 20
) -> tuple[list[float], float]:
    """(seconds of kernel time per call, kernels per call) of `fn` on CUDA over `reps` calls,
    each after an L2 flush: an int8 add, which no norm launches, identified by profiling it
    alone and left out (a fill would look like the memsets of torch.zeros)."""
    flush = torch.zeros(FLUSH_BYTES, dtype=torch.int8, device="cuda")
    flush_names = {name for name, _ in _profile(lambda: flush.add_(1))}
    calls: list[list[tuple[str, float]]] = []

    def body() -> None:
        for _ in range(reps):
            flush.add_(1)
            for g in grads:
                g.grad = None
            fn()

    for _ in range(2):
        fn()  # warm-up: compile and autotune outside the profile
    events = _profile(body)
    # split the stream at each flush kernel: what follows it, up to the next one, is one call
    for name, us in events:
        if name in flush_names:
            calls.append([])
        elif calls:
            calls[-1].append((name, us))
    per_call = [sum(us for _, us in call) / 1e6 for call in calls]
    return per_call, statistics.mean(len(call) for call in calls)
