"""Triton kernels for squashing norms: one-pass forward, one-pass backward with block partial sums.

Why: on GPU the eager formula launches ~3 kernels forward and ~8 backward, each a full trip
through HBM. Here the forward reads x once and writes y once; the backward reads x and dy once,
writes dx once, and leaves dγ/dβ (per column) and dα/ds (per column block) as fp32 partial sums
per row-program, which one small torch reduction finishes. f(αx+s) is recomputed from x, so
nothing beyond x is saved for backward. Math is fp32 whatever the storage dtype.

This module imports triton at the top: import it only through `megadyt.norms.dispatch`, which
treats an ImportError as "triton unavailable". With TRITON_INTERPRET=1 set before triton is
imported, the same kernels run on CPU tensors through Triton's interpreter (that is how the
tests check them without a GPU), so only interpreter-supported features are used here (tanh
is built from exp; no libdevice).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton
import triton.language as tl

from megadyt.norms.squashing import SquashingFunction

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - very old or very new triton
    InterpretedFunction = ()

_TWO_OVER_SQRT_PI = tl.constexpr(1.1283791670955126)  # jit code reads only constexpr globals


@triton.jit
def _tanh(z):
    # sign(z)·(1-e)/(1+e), e = exp(-2|z|): no overflow, exact ±1 at ±inf; below |z| = 1/4, where
    # 1-e cancels, the odd Taylor series to z⁹. Max error ~1.6e-7 relative (as fused_cpu._tanh).
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    z2 = z * z
    small = a * (
        1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0 + z2 * (62.0 / 2835.0))))
    )
    t = tl.where(a < 0.25, small, big)
    return tl.where(z < 0.0, -t, t)


@triton.jit
def _tanh_derivative(z, f):
    return 1.0 - f * f


@triton.jit
def _erf(z):
    return tl.math.erf(z)


@triton.jit
def _erf_derivative(z, f):
    return _TWO_OVER_SQRT_PI * tl.exp(-z * z)


# SquashingFunction.name -> (f, f′(z, f)) as Triton functions. A squashing function without an
# entry runs the compiled path on CUDA (inductor generates its Triton code); see dispatch.
TRITON_FUNCTIONS = {"tanh": (_tanh, _tanh_derivative), "erf": (_erf, _erf_derivative)}


def supports(function: SquashingFunction) -> bool:
    """Whether hand-written kernels exist for `function`."""
    return function.name in TRITON_FUNCTIONS


@triton.jit
def _fwd_kernel(
    x_ptr, y_ptr, a_ptr, s_ptr, w_ptr, b_ptr, M, N,
    F: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(a_ptr).to(tl.float32) * x
    if HAS_SHIFT:
        z = z + tl.load(s_ptr).to(tl.float32)
    f = F(z)
    y = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :] * f
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    dy_ptr, x_ptr, a_ptr, s_ptr, w_ptr, dx_ptr, dw_part, db_part, da_part, ds_part,
    M, N,
    F: tl.constexpr, DF: tl.constexpr, HAS_SHIFT: tl.constexpr, ROWS_PER_PROG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    a = tl.load(a_ptr).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    # Per-column accumulators, each tile's rows summed into them: 2-D [BLOCK_M, BLOCK_N] ones
    # (four of them) needed ~256 fp32 registers a thread and spilled, which made this backward
    # 8x slower than torch's rms_norm backward on the first H200 measurement.
    acc_w = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_a = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_s = tl.zeros([BLOCK_N], dtype=tl.float32)
    # Constexpr trip count: some interpreter versions reject runtime loop bounds.
    for r0 in range(0, ROWS_PER_PROG, BLOCK_M):
        rows = pid_m * ROWS_PER_PROG + r0 + tl.arange(0, BLOCK_M)
        mask = (rows < M)[:, None] & col_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)  # 0 where masked
        z = a * x
        if HAS_SHIFT:
            z = z + tl.load(s_ptr).to(tl.float32)
        f = F(z)
        dz = g * w[None, :] * DF(z, f)  # dL/dz, z = αx+s
        tl.store(dx_ptr + offs, (dz * a).to(dx_ptr.dtype.element_ty), mask=mask)
        acc_w += tl.sum(g * f, axis=0)
        acc_b += tl.sum(g, axis=0)
        acc_a += tl.sum(dz * x, axis=0)
        acc_s += tl.sum(dz, axis=0)
    part = pid_m.to(tl.int64) * N + cols
    tl.store(dw_part + part, acc_w, mask=col_mask)
    tl.store(db_part + part, acc_b, mask=col_mask)
    slot = pid_m * tl.num_programs(1) + pid_n
    tl.store(da_part + slot, tl.sum(acc_a, axis=0))
    tl.store(ds_part + slot, tl.sum(acc_s, axis=0))


INTERPRETED = isinstance(_fwd_kernel, InterpretedFunction) if InterpretedFunction else False


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs_target(x: torch.Tensor) -> int:
    """How many programs the backward should aim for: a few per SM (few under the interpreter)."""
    if x.device.type == "cuda":
        return 4 * _sm_count(x.device.index if x.device.index is not None else 0)
    return 4


def _launch_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def forward(
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """y = γ·f(αx+s)+β for 2-D contiguous `x`, in x's dtype."""
    f, _ = TRITON_FUNCTIONS[function.name]
    M, N = x.shape
    y = torch.empty_like(x)
    block_n = min(triton.next_power_of_2(N), 1024)
    block_m = max(1, min(triton.next_power_of_2(M), 4096 // block_n))
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    weight = weight.contiguous()
    with _launch_guard(x):
        _fwd_kernel[grid](
            x, y, alpha, shift if shift is not None else alpha, weight,
            bias.contiguous() if bias is not None else weight, M, N,
            F=f, HAS_SHIFT=shift is not None, HAS_BIAS=bias is not None, BLOCK_M=block_m,
            BLOCK_N=block_n,
        )  # fmt: skip
    return y


def backward(
    function: SquashingFunction,
    dy: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(dx, dα, ds or None, dγ, dβ); dx in x's dtype, parameter grads in fp32."""
    f, df = TRITON_FUNCTIONS[function.name]
    M, N = x.shape
    dx = torch.empty_like(x)
    block_n = min(triton.next_power_of_2(N), 256)
    block_m = max(1, min(triton.next_power_of_2(M), 2048 // block_n))
    n_col = triton.cdiv(N, block_n)
    # Rows per program: a power of two (few kernel variants), enough programs to fill the GPU,
    # at most 1024 rows so the partial sums stay small next to dx.
    wanted = triton.cdiv(M, max(1, _programs_target(x) // n_col))
    rows_per_prog = min(max(triton.next_power_of_2(wanted), block_m), max(1024, block_m))
    n_row = triton.cdiv(M, rows_per_prog)
    f32 = dict(device=x.device, dtype=torch.float32)
    dw_part, db_part = torch.empty(n_row, N, **f32), torch.empty(n_row, N, **f32)
    da_part, ds_part = torch.empty(n_row, n_col, **f32), torch.empty(n_row, n_col, **f32)
    with _launch_guard(x):
        _bwd_kernel[(n_row, n_col)](
            dy, x, alpha, shift if shift is not None else alpha, weight.contiguous(), dx,
            dw_part, db_part, da_part, ds_part, M, N,
            F=f, DF=df, HAS_SHIFT=shift is not None, ROWS_PER_PROG=rows_per_prog,
            BLOCK_M=block_m, BLOCK_N=block_n,
        )  # fmt: skip
    ds = ds_part.sum().reshape(1) if shift is not None else None
    return dx, da_part.sum().reshape(1), ds, dw_part.sum(0), db_part.sum(0)
