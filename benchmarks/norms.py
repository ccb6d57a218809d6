"""DyT/Derf kernels against RMSNorm and against the memory floor of this machine.

For each shape and dtype, times forward (under no_grad) and forward+backward of DyT and Derf in
every available implementation (reference formula, torch.compile'd fused kernels, Triton on
CUDA) and of RMSNorm (torch.nn.functional.rms_norm, eager and torch.compile'd; Transformer
Engine / apex fused kernels on CUDA when importable). On CUDA, the peer a user would pick
instead, Liger-Kernel's Triton RMSNorm and DyT (impl "liger"), is timed too when it imports
(pip install liger-kernel; see benchmarks/norm_peers.py); the tables say why when it is not.
On CPU the implementations of one shape and dtype are timed round-robin and reported as
medians, so load from other processes hits all alike; on CUDA each is timed by
triton.testing.do_bench (L2 flushed before every call; median of its per-call times).

The floor is the time to move the bytes an ideal kernel must move, at the copy bandwidth
measured in the same run (`dst.copy_(src)` of a large buffer, bandwidth = 2·bytes/time):
forward reads x and writes y (2 activations); forward+backward adds reading x and dy and writing
dx (5 activations). "floor" = floor time / measured time (1.0 = bandwidth-bound).

`--appendix-c` runs the paper's Appendix C protocol instead: LLaMA-7B width, one 4096-token
sequence (4096×4096 activations), bf16, total time of 100 forward and of 100 forward+backward
passes of an RMSNorm layer vs a DyT (and Derf) layer, as megatron modules of this package
(plus Liger-Kernel's LigerRMSNorm and LigerDyT on CUDA when installed).

    python benchmarks/norms.py [--shapes 1024x1024 2048x4096 4096x4096] [--dtypes fp32 bf16]
    python benchmarks/norms.py --appendix-c [--repeats 100] [--update]  # repeats = passes

On CPU the measured times include first-touch page faults of each fresh output buffer (the copy
does not allocate), so CPU floor fractions are low; THP_MEM_ALLOC_ENABLE=1 (huge pages in
PyTorch's CPU allocator) removes much of that for every op alike.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import kernel_timing  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
import norm_peers  # noqa: E402
import norm_sweep  # noqa: E402
from machine import cpu_name  # noqa: E402

from megadyt.norms import (  # noqa: E402
    derf,
    dispatch,  # noqa: E402
    dyt,
)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RMS_EPS = 1e-5


class Timer:
    """Wall time of a callable; CUDA events (after a synchronize) on CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def copy_bandwidth(device: torch.device, timer: Timer, mbytes: int = 256, repeats: int = 10):
    """Bytes/s of dst.copy_(src) (2·bytes per copy), median of `repeats` after warm-up; on CUDA
    1 GiB timed by do_bench, so launch latency does not lower it (and inflate floor fractions)."""
    if device.type == "cuda":
        mbytes = max(mbytes, 1024)
    src = torch.randn(mbytes * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    if device.type == "cuda":
        times = kernel_timing.wall_times(lambda: dst.copy_(src), [])
    else:
        times = [timer(lambda: dst.copy_(src)) for _ in range(repeats)]
    return 2 * src.numel() * 4 / statistics.median(times)


# ----------------------------------------------------------------------------- candidates


def candidates(device: torch.device, n: int, dtype: torch.dtype, impls: list[str]):
    """[(op, impl, fn(x, params) -> y, params)] for every implementation available here."""
    make = dict(device=device, dtype=dtype)
    dyt_p = {"alpha": torch.tensor([0.5], **make), "weight": torch.ones(n, **make)}
    derf_p = dict(dyt_p, shift=torch.tensor([0.1], **make))
    rms_p = {"weight": torch.ones(n, **make)}
    out = []
    dyt_impls = [i for i in impls if i != "triton" or _triton_ok(device)]
    for impl in dyt_impls:

        def dyt_fn(x, p, impl=impl):
            return dyt(x, p["alpha"], p["weight"], impl=impl)

        def derf_fn(x, p, impl=impl):
            return derf(x, p["alpha"], p["shift"], p["weight"], impl=impl)

        out += [("dyt", impl, dyt_fn, dyt_p), ("derf", impl, derf_fn, derf_p)]

    def rms(x, p):
        return F.rms_norm(x, (n,), p["weight"], RMS_EPS)

    out.append(("rmsnorm", "torch", rms, rms_p))
    if "compiled" in impls:  # RMSNorm compiled too: the fair peer of compiled DyT/Derf
        # A fresh code object per (shape, dtype): dynamo's recompile limit counts per code object.
        code, closure = rms.__code__.replace(), rms.__closure__
        fresh = types.FunctionType(code, rms.__globals__, "rms", None, closure)
        out.append(("rmsnorm", "torch.compile", torch.compile(fresh, dynamic=False), rms_p))
    peers = []
    if (fused := norm_peers.rms_fused(device, n, dtype, RMS_EPS)) is not None:
        peers.append(("rmsnorm", *fused))
    liger = norm_peers.liger_modules(device, n, dtype, RMS_EPS, alpha=0.5)
    peers += [(op, "liger", module) for op, module in liger.items()]
    for op, name, module in peers:
        out.append((op, name, lambda x, p, m=module: m(x), dict(module.named_parameters())))
    return [(op, i, fn, {k: v.requires_grad_() for k, v in p.items()}) for op, i, fn, p in out]


def _triton_ok(device: torch.device) -> bool:
    return device.type == "cuda" and dispatch.triton_backend() is not None


# --------------------------------------------------------------------------------- kernels


# Activations an ideal kernel moves per pass: forward reads x, writes y; backward reads x and dy
# and writes dx (parameter gradients are a row of sums, negligible next to them).
FLOOR_ACTIVATIONS = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}


def _steps(x: torch.Tensor, dy: torch.Tensor) -> dict[str, Callable]:
    """pass -> step(fn, params): forward under no_grad; backward alone (through a graph kept
    from one forward); forward and backward."""
    kept: dict[int, torch.Tensor] = {}

    def fwd(fn, p):
        with torch.no_grad():
            fn(x, p)

    def bwd(fn, p):
        if id(fn) not in kept:
            kept[id(fn)] = fn(x, p)
        kept[id(fn)].backward(dy, retain_graph=True)

    def fwd_bwd(fn, p):
        fn(x, p).backward(dy)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd_bwd}


def bench_shape(device, timer, shape, dtype, impls, warmup, repeats, bandwidth):
    """Rows for one (shape, dtype): every candidate, forward, backward and both."""
    m, n = shape
    x = torch.randn(m, n, device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(m, n, device=device, dtype=dtype)
    cands = candidates(device, n, dtype, impls)

    def clear(p):
        x.grad = None
        for t in p.values():
            t.grad = None

    jobs = [(op, impl, name, step, fn, p) for op, impl, fn, p in cands
            for name, step in _steps(x, dy).items()]  # fmt: skip
    times: dict[tuple, list[float]] = {job[:3]: [] for job in jobs}
    kernels: dict[tuple, tuple[list[float], float]] = {}
    for *_, step, fn, p in jobs:  # warm-up (compiles on first call)
        for _ in range(warmup):
            clear(p)
            step(fn, p)
    if timer.cuda:  # per-call times with L2 flushed before each call: see kernel_timing
        for op, impl, name, step, fn, p in jobs:
            call = lambda s=step, f=fn, q=p: s(f, q)  # noqa: E731
            times[(op, impl, name)] = kernel_timing.wall_times(call, [x, *p.values()])
            kernels[(op, impl, name)] = kernel_timing.kernel_times(call, [x, *p.values()])
    else:
        for _ in range(repeats):
            for op, impl, name, step, fn, p in jobs:
                clear(p)
                times[(op, impl, name)].append(timer(lambda s=step, f=fn, q=p: s(f, q)))
    size = x.element_size() * x.numel()
    floor = {name: k * size / bandwidth for name, k in FLOOR_ACTIVATIONS.items()}
    base = {name: statistics.median(times[("rmsnorm", "torch", name)]) for name in floor}
    rows = []
    for (op, impl, name), ts in times.items():
        sec = statistics.median(ts)
        row = {
            "shape": f"{m}x{n}",
            "dtype": {v: k for k, v in DTYPES.items()}[dtype],
            "op": op,
            "impl": impl,
            "pass": name,
            "ms": sec * 1e3,
            "min_ms": min(ts) * 1e3,
            "floor_ms": floor[name] * 1e3,
            "floor_fraction": floor[name] / sec,
            "vs_rmsnorm_torch": sec / base[name],
            "repeats": len(ts),
        }
        if (op, impl, name) in kernels:
            per_call, count = kernels[(op, impl, name)]
            kernel_s = statistics.median(per_call)
            row.update(kernel_ms=kernel_s * 1e3, kernel_floor_fraction=floor[name] / kernel_s,
                       kernels_per_call=count)  # fmt: skip
        rows.append(row)
    return rows


def print_table(rows: list[dict], liger: str) -> None:
    kernels = any("kernel_ms" in r for r in rows)
    extra = " kernel ms | kernel floor | kernels |" if kernels else ""
    print(f"| shape | dtype | op | impl | pass | ms | floor | vs rmsnorm torch |{extra}")
    print("|---|---|---|---|---|---:|---:|---:|" + ("---:|---:|---:|" if kernels else ""))
    for r in rows:
        cells = (
            f" {r['kernel_ms']:.4f} | {r['kernel_floor_fraction']:.2f} "
            f"| {r['kernels_per_call']:.0f} |"
            if "kernel_ms" in r
            else ""
        )
        print(
            f"| {r['shape']} | {r['dtype']} | {r['op']} | {r['impl']} | {r['pass']} "
            f"| {r['ms']:.4f} | {r['floor_fraction']:.2f} | {r['vs_rmsnorm_torch']:.2f}x |{cells}"
        )
    if not any(r["impl"] == "liger" for r in rows):
        print(f"| all | all | rmsnorm, dyt | liger | all | {liger} | - | - |")


def target_check(rows: list[dict]) -> list[dict]:
    """Per shape, dtype and pass: megadyt's Triton DyT against the issue's targets, by kernel
    time on CUDA (wall time elsewhere): within 1.25x of the floor, faster than Liger's DyT."""
    key = "kernel_ms" if any("kernel_ms" in r for r in rows) else "ms"
    index = {(r["shape"], r["dtype"], r["op"], r["impl"], r["pass"]): r for r in rows}
    out = []
    for (shape, dtype, op, impl, name), r in index.items():
        if op != "dyt" or impl != "triton":
            continue
        liger = index.get((shape, dtype, "dyt", "liger", name))
        rms = index[(shape, dtype, "rmsnorm", "torch", name)]
        out.append(
            {
                "shape": shape,
                "dtype": dtype,
                "pass": name,
                "by": key,
                "times_floor": r[key] / r["floor_ms"],
                "within_target": r[key] <= 1.25 * r["floor_ms"],
                "vs_liger_dyt": None if liger is None else r[key] / liger[key],
                "rmsnorm_torch_times_floor": rms[key] / r["floor_ms"],
            }
        )
    for t in out:
        liger = "-" if t["vs_liger_dyt"] is None else f"{t['vs_liger_dyt']:.2f}x Liger's DyT"
        print(
            f"DyT triton {t['shape']} {t['dtype']} {t['pass']}: {t['times_floor']:.2f}x the "
            f"floor (target <= 1.25), {liger}; torch rms_norm "
            f"{t['rmsnorm_torch_times_floor']:.2f}x the floor"
        )
    return out


# ------------------------------------------------------------------------------ Appendix C


def appendix_c(device, timer, impls, passes, liger: str):
    """Total ms of `passes` forward and forward+backward passes, RMSNorm vs DyT/Derf layers."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megadyt.norms import Derf, DyT, RMSNorm

    n, tokens, dtype = 4096, 4096, torch.bfloat16
    config = TransformerConfig(
        num_layers=1, hidden_size=n, num_attention_heads=32, params_dtype=dtype,
        use_cpu_initialization=True,
    )  # fmt: skip
    layers = [("RMSNorm", "megadyt (torch rms_norm)", RMSNorm(config, n))]
    if "compiled" in impls:
        layers.append(("RMSNorm", "torch.compile", torch.compile(RMSNorm(config, n))))
    for impl in [i for i in impls if i != "triton" or _triton_ok(device)]:
        layers.append(("DyT", impl, DyT(config, n, alpha0=0.8, impl=impl)))
        layers.append(("Derf", impl, Derf(config, n, alpha0=0.8, impl=impl)))
    peers = norm_peers.liger_modules(device, n, dtype, config.layernorm_epsilon, alpha=0.8)
    layers += [({"rmsnorm": "RMSNorm", "dyt": "DyT"}[op], "liger", m) for op, m in peers.items()]
    x = torch.randn(tokens, n, device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(tokens, n, device=device, dtype=dtype)

    def run_fwd(layer, count):
        with torch.no_grad():
            for _ in range(count):
                layer(x)

    def run_fwd_bwd(layer, count):
        for _ in range(count):
            x.grad = None  # no accumulation pass: each backward writes a fresh dx
            layer.zero_grad(set_to_none=True)
            layer(x).backward(dy)

    for _name, _impl, layer in layers:
        layer.to(device)
        run_fwd(layer, 2)  # warm-up (compiles)
        run_fwd_bwd(layer, 2)
    # The passes run in chunks of up to 10, round-robin over the layers, so that load from
    # other processes spreads over all layers alike; a layer's total is the sum of its chunks.
    chunk = min(10, passes)
    sizes = [chunk] * (passes // chunk) + ([passes % chunk] if passes % chunk else [])
    totals: dict[tuple, float] = {}
    for count in sizes:
        for name, impl, layer in layers:
            for label, fn in (("fwd", run_fwd), ("fwd+bwd", run_fwd_bwd)):
                sec = timer(lambda f=fn, m=layer, c=count: f(m, c))
                totals[(name, impl, label)] = totals.get((name, impl, label), 0.0) + sec
    rows = []
    for (name, impl, label), total in totals.items():
        ref = totals[("RMSNorm", "megadyt (torch rms_norm)", label)]
        rows.append(
            {
                "layer": name,
                "impl": impl,
                "pass": label,
                "passes": passes,
                "total_ms": total * 1e3,
                "vs_rmsnorm": total / ref,
            }  # fmt: skip
        )
    print(f"\nAppendix C protocol: {tokens}x{n} bf16, total over {passes} passes\n")
    print("| layer | impl | pass | total ms | vs RMSNorm |")
    print("|---|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['impl']} | {r['pass']} | {r['total_ms']:.1f} "
            f"| {r['vs_rmsnorm']:.2f}x |"
        )
    if not peers:
        print(f"| RMSNorm, DyT | liger | all | {liger} | - |")
    return rows


# ------------------------------------------------------------------------------------ main


def machine_info(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "liger_kernel": norm_peers.liger_status(device),
    }


def _triton_version() -> str | None:
    try:
        return importlib.import_module("triton").__version__
    except ImportError:
        return None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", nargs="+", default=["1024x1024", "2048x4096", "4096x4096"])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument(
        "--impls", nargs="+", default=["reference", "compiled", "triton"],
        choices=["reference", "compiled", "triton", "auto"],
    )  # fmt: skip
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--repeats", type=int, default=None,
        help="timed rounds per case (default 7); with --appendix-c: passes (default 100)",
    )  # fmt: skip
    p.add_argument("--appendix-c", action="store_true", help="run the Appendix C protocol instead")
    p.add_argument(
        "--sweep", action="store_true",
        help="CUDA: also time megadyt's Triton kernels at other launch shapes (norm_sweep.py)",
    )  # fmt: skip
    p.add_argument(
        "--update", action="store_true", help="merge into an existing --output JSON file"
    )
    p.add_argument("--output", default="bench-norms.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    timer = Timer(device)
    info = machine_info(device)
    result: dict = {"machine": info, "settings": vars(args)}
    if not args.appendix_c:
        bandwidth = copy_bandwidth(device, timer)
        result["copy_bandwidth_GBps"] = bandwidth / 1e9
        print(f"copy bandwidth: {bandwidth / 1e9:.1f} GB/s on {info['device_name']}\n")
        rows = []
        for shape in args.shapes:
            m, n = (int(v) for v in shape.lower().split("x"))
            for dt in args.dtypes:
                rows += bench_shape(
                    device, timer, (m, n), DTYPES[dt], args.impls, args.warmup,
                    args.repeats if args.repeats is not None else 7, bandwidth,
                )  # fmt: skip
                print(f"done: {shape} {dt}", file=sys.stderr, flush=True)
        print_table(rows, info["liger_kernel"])
        result["rows"] = rows
        result["targets"] = target_check(rows)
        if args.sweep and _triton_ok(device):
            shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
            result["sweep"] = [
                row for dt in args.dtypes for row in norm_sweep.sweep(shapes, DTYPES[dt], bandwidth)
            ]
        elif args.sweep:
            print("\n--sweep: skipped, it times the Triton kernels on CUDA only")
    else:
        passes = args.repeats if args.repeats is not None else 100
        result["appendix_c"] = appendix_c(device, timer, args.impls, passes, info["liger_kernel"])
        result["appendix_c_settings"] = result.pop("settings")
    out = Path(args.output)
    if args.update and out.exists():
        result = {**json.loads(out.read_text()), **result}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
