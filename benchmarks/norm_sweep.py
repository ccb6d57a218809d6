"""megadyt's Triton DyT/Derf kernels at other launch shapes than the defaults, on CUDA.

The defaults (`fused_triton.forward_config` / `backward_config`) were chosen without a GPU, from
the compiled code (registers, instructions per element, no spills). This sweep times the
neighbouring shapes by kernel time (benchmarks/kernel_timing.py), forward and backward (the pass
over x and dy plus the sum of its partials) separately, against the HBM floor, so one GPU run
shows whether a default should move:

- forward: warps per program 4 or 8, 16-byte vectors per thread 1, 2, 4 or 8;
- backward: warps 4 or 8, rows per loop step 1, 2 or 4, programs per SM 2, 4 or 8.

`python benchmarks/norms.py --device cuda --sweep --shapes 4096x4096 8192x8192 --dtypes bf16`
runs it after the main table (~1 minute on an H200, mostly compiling the variants).
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics

import kernel_timing
import torch

from megadyt.norms import dispatch
from megadyt.norms.derf import ERF
from megadyt.norms.dyt import TANH

FORWARD_GRID = {"num_warps": (4, 8), "vectors": (1, 2, 4, 8)}
BACKWARD_GRID = {"num_warps": (4, 8), "rows": (1, 2, 4), "programs_per_sm": (2, 4, 8)}


def _grid(grid: dict) -> list[dict]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _configs(backend, x: torch.Tensor) -> list[tuple[str, dict, object, bool]]:
    """(pass, settings, LaunchConfig, is the default) for every shape in the two grids."""
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    default_fwd, default_bwd = backend.forward_config(x), backend.backward_config(x)
    out = []
    for s in _grid(FORWARD_GRID):
        cfg = backend.forward_config(x, s["num_warps"], s["vectors"])
        out.append(("fwd", s, cfg, cfg == default_fwd))
    for s in _grid(BACKWARD_GRID):
        programs = s["programs_per_sm"] * sms
        cfg = backend.backward_config(x, s["num_warps"], programs, s["rows"])
        out.append(("bwd", s, cfg, cfg == default_bwd))
    return out


def _call(backend, name: str, function, tensors: tuple, cfg):
    """The forward or backward of `function` at launch shape `cfg`, as a no-argument call."""
    dy, x, alpha, shift, weight = tensors
    if name == "fwd":
        return lambda: backend.forward(function, x, alpha, shift, weight, None, cfg)
    return lambda: backend.backward(function, dy, x, alpha, shift, weight, None, cfg)


def sweep(shapes: list[tuple[int, int]], dtype: torch.dtype, bandwidth: float) -> list[dict]:
    """One row per (shape, function, pass, launch shape): kernel ms and fraction of the floor."""
    backend = dispatch.triton_backend()
    rows = []
    for (m, n), function in itertools.product(shapes, (TANH, ERF)):
        x = torch.randn(m, n, device="cuda", dtype=dtype)
        dy = torch.randn_like(x)
        alpha = torch.tensor([0.5], device="cuda", dtype=dtype)
        shift = torch.tensor([0.1], device="cuda", dtype=dtype) if function is ERF else None
        weight = torch.ones(n, device="cuda", dtype=dtype)
        size = x.numel() * x.element_size()
        for name, settings, cfg, is_default in _configs(backend, x):
            call = _call(backend, name, function, (dy, x, alpha, shift, weight), cfg)
            per_call, count = kernel_timing.kernel_times(call, [])
            floor = (2 if name == "fwd" else 3) * size / bandwidth
            sec = statistics.median(per_call)
            rows.append(
                {
                    "shape": f"{m}x{n}", "function": function.name, "pass": name,
                    **settings, "config": dataclasses.asdict(cfg), "default": is_default,
                    "kernel_ms": sec * 1e3, "floor_ms": floor * 1e3,
                    "times_floor": sec / floor, "kernels_per_call": count,
                }
            )  # fmt: skip
    print_sweep(rows)
    return rows


def print_sweep(rows: list[dict]) -> None:
    """The best launch shape per (shape, function, pass) beside the default."""
    print("\n| shape | f | pass | default ms | x floor | best ms | x floor | best settings |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["function"], r["pass"]), []).append(r)
    for (shape, function, name), group in groups.items():
        default = next(r for r in group if r["default"])
        best = min(group, key=lambda r: r["kernel_ms"])
        keys = ("num_warps", "vectors") if name == "fwd" else BACKWARD_GRID
        settings = ", ".join(f"{k}={best[k]}" for k in keys)
        print(
            f"| {shape} | {function} | {name} | {default['kernel_ms']:.4f} "
            f"| {default['times_floor']:.2f} | {best['kernel_ms']:.4f} "
            f"| {best['times_floor']:.2f} | {settings} |"
        )
