"""Triton kernels for squashing norms: one-pass forward, one-pass backward with block partial sums.

Why: on GPU the eager formula launches ~3 kernels forward and ~8 backward, each a full trip
through HBM. Here the forward reads x once and writes y once; the backward reads x and dy once,
writes dx once, and leaves dγ/dβ (per column) and dα/ds (per program) as fp32 partial sums that
one small kernel adds up, writing the gradients in the parameters' dtypes. f(αx+s) is recomputed
from x, so nothing beyond x is saved for backward. Math is fp32 whatever the storage dtype.

At the HBM floor a kernel has ~30 instructions per bf16 element to spend, so the launch shapes
and the math (triton_math) are chosen to stay well under that. A program's tile is one 16-byte
vector per thread and row across all its warps (`LaunchConfig`), so loads are vectorised and
the backward's column sums stay inside each thread; the backward runs a few programs per SM,
each looping over its rows, so the partial sums are a few MB at most.

This module imports triton at the top: import it only through `megadyt.norms.dispatch`, which
treats an ImportError as "triton unavailable". With TRITON_INTERPRET=1 set before triton is
imported, the same kernels run on CPU tensors through Triton's interpreter (that is how the
tests check them without a GPU); there FAST is off, so f uses plain exp2 and division instead
of the SFU instructions, which the interpreter cannot run.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from megadyt.norms.squashing import SquashingFunction
from megadyt.norms.triton_math import TRITON_FUNCTIONS

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # pragma: no cover - very old or very new triton
    InterpretedFunction = ()


def supports(function: SquashingFunction) -> bool:
    """Whether hand-written kernels exist for `function`."""
    return function.name in TRITON_FUNCTIONS


@triton.jit
def _fwd_kernel(
    x_ptr, y_ptr, a_ptr, s_ptr, w_ptr, b_ptr, M, N,
    F: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISE: tl.constexpr,
    FAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
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
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = w[None, :] * F(z, PRECISE, FAST)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(
    dy_ptr, x_ptr, a_ptr, s_ptr, w_ptr, dx_ptr, dw_part, db_part, da_part, ds_part, M, N,
    F: tl.constexpr, DF: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_BIAS: tl.constexpr,
    PRECISE: tl.constexpr, FAST: tl.constexpr, ROWS_PER_PROG: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    a = tl.load(a_ptr).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    # Per-column sums. BLOCK_N spans all threads of the program (LaunchConfig), so each
    # thread owns its columns in every row and the row sums below never leave the thread.
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
        f = F(z, PRECISE, FAST)
        dz = g * w[None, :] * DF(z, f, FAST)  # dL/dz, z = αx+s
        tl.store(dx_ptr + offs, (dz * a).to(dx_ptr.dtype.element_ty), mask=mask)
        acc_w += tl.sum(g * f, axis=0)
        acc_a += tl.sum(dz * x, axis=0)
        if HAS_BIAS:
            acc_b += tl.sum(g, axis=0)
        if HAS_SHIFT:
            acc_s += tl.sum(dz, axis=0)
    part = pid_m.to(tl.int64) * N + cols
    tl.store(dw_part + part, acc_w, mask=col_mask)
    if HAS_BIAS:
        tl.store(db_part + part, acc_b, mask=col_mask)
    slot = pid_m * tl.num_programs(1) + tl.program_id(1)
    tl.store(da_part + slot, tl.sum(acc_a, axis=0))
    if HAS_SHIFT:
        tl.store(ds_part + slot, tl.sum(acc_s, axis=0))


@triton.jit
def _bwd_sum_kernel(
    dw_part, db_part, da_part, ds_part, dw_ptr, db_ptr, da_ptr, ds_ptr, n_rows, N, n_slots,
    HAS_SHIFT: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
    SLOTS: tl.constexpr,
):  # fmt: skip
    """Sum the partials over the backward's programs; store in the parameters' dtypes."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, ROWS)
    mask = (rows < n_rows)[:, None] & (cols < N)[None, :]
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    dw = tl.sum(tl.load(dw_part + offs, mask=mask, other=0.0), axis=0)
    tl.store(dw_ptr + cols, dw.to(dw_ptr.dtype.element_ty), mask=cols < N)
    if HAS_BIAS:
        db = tl.sum(tl.load(db_part + offs, mask=mask, other=0.0), axis=0)
        tl.store(db_ptr + cols, db.to(db_ptr.dtype.element_ty), mask=cols < N)
    if tl.program_id(0) == 0:
        slots = tl.arange(0, SLOTS)
        da = tl.sum(tl.load(da_part + slots, mask=slots < n_slots, other=0.0), axis=0)
        tl.store(da_ptr, da.to(da_ptr.dtype.element_ty))
        if HAS_SHIFT:
            ds = tl.sum(tl.load(ds_part + slots, mask=slots < n_slots, other=0.0), axis=0)
            tl.store(ds_ptr, ds.to(ds_ptr.dtype.element_ty))


INTERPRETED = isinstance(_fwd_kernel, InterpretedFunction) if InterpretedFunction else False


# ------------------------------------------------------------------------------- launching

# Backward programs per SM: enough warps resident (4 × 4) to keep ~32 KB of loads in flight
# per SM, few enough that the fp32 partial sums (programs × BLOCK_N × 4 bytes) stay ~2 MB.
PROGRAMS_PER_SM = 4
FWD_VECTORS = 4  # 16-byte vectors per thread and tensor in one forward program
BWD_ROWS = 2  # rows per backward loop step: 2 vectors of x and of dy in flight per thread


@dataclass(frozen=True)
class LaunchConfig:
    """A program's tile (block_m rows × block_n columns) and warps; for the backward also the
    rows each program loops over. block_n is one 16-byte vector per thread across all warps,
    so a thread holds the same columns in every row (vectorised loads, in-thread column sums)."""

    block_m: int
    block_n: int
    num_warps: int = 4
    rows_per_prog: int = 0  # backward only


def _vector(x: torch.Tensor) -> int:
    return max(1, 16 // x.element_size())


def forward_config(x: torch.Tensor, num_warps: int = 4, vectors: int = FWD_VECTORS):
    """The forward's launch for 2-D `x`: `vectors` vectors per thread, rows filling the rest."""
    M, N = x.shape
    block_n = min(triton.next_power_of_2(N), _vector(x) * 32 * num_warps)
    per_program = vectors * _vector(x) * 32 * num_warps
    block_m = max(1, min(triton.next_power_of_2(M), per_program // block_n))
    return LaunchConfig(block_m, block_n, num_warps)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _programs_target(x: torch.Tensor) -> int:
    """How many programs the backward should aim for: a few per SM (few under the interpreter)."""
    if x.device.type == "cuda":
        return PROGRAMS_PER_SM * _sm_count(x.device.index if x.device.index is not None else 0)
    return 4


def backward_config(
    x: torch.Tensor, num_warps: int = 4, programs: int | None = None, rows: int = BWD_ROWS
) -> LaunchConfig:
    """The backward's launch for 2-D `x`: about `programs` (default _programs_target) programs,
    each looping over a power of two of rows (few kernel variants), `rows` at a time."""
    M, N = x.shape
    block_n = min(triton.next_power_of_2(N), _vector(x) * 32 * num_warps)
    per_step = rows * _vector(x) * 32 * num_warps
    block_m = max(1, min(triton.next_power_of_2(M), per_step // block_n))
    per_column_block = max(1, (programs or _programs_target(x)) // triton.cdiv(N, block_n))
    rows_per_prog = max(block_m, triton.next_power_of_2(triton.cdiv(M, per_column_block)))
    return LaunchConfig(block_m, block_n, num_warps, rows_per_prog)


def _launch_guard(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


def forward(
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """y = γ·f(αx+s)+β for 2-D contiguous `x`, in x's dtype."""
    f, _ = TRITON_FUNCTIONS[function.name]
    M, N = x.shape
    cfg = config or forward_config(x)
    y = torch.empty_like(x)
    weight = weight.contiguous()
    with _launch_guard(x):
        _fwd_kernel[(triton.cdiv(M, cfg.block_m), triton.cdiv(N, cfg.block_n))](
            x, y, alpha, shift if shift is not None else alpha, weight,
            bias.contiguous() if bias is not None else weight, M, N,
            F=f, HAS_SHIFT=shift is not None, HAS_BIAS=bias is not None,
            PRECISE=x.dtype == torch.float32, FAST=not INTERPRETED, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        )  # fmt: skip
    return y


def backward(
    function: SquashingFunction,
    dy: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: LaunchConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(dx, dα, ds or None, dγ, dβ or None without `bias`); dx in x's dtype, each parameter's
    gradient in that parameter's dtype (summed in fp32). Two launches: the pass over x and dy,
    then the sum of its per-program partials."""
    f, df = TRITON_FUNCTIONS[function.name]
    M, N = x.shape
    cfg = config or backward_config(x)
    n_row, n_col = triton.cdiv(M, cfg.rows_per_prog), triton.cdiv(N, cfg.block_n)
    f32 = dict(device=x.device, dtype=torch.float32)
    dw_part = torch.empty(n_row, N, **f32)
    db_part = torch.empty(n_row, N, **f32) if bias is not None else dw_part
    da_part = torch.empty(n_row * n_col, **f32)
    ds_part = torch.empty(n_row * n_col, **f32) if shift is not None else da_part
    dx = torch.empty_like(x)
    dw, da = torch.empty_like(weight), torch.empty_like(alpha)
    db = torch.empty_like(bias) if bias is not None else None
    ds = torch.empty_like(shift) if shift is not None else None
    flags = dict(HAS_SHIFT=shift is not None, HAS_BIAS=bias is not None)
    rows = triton.next_power_of_2(n_row)
    with _launch_guard(x):
        _bwd_kernel[(n_row, n_col)](
            dy, x, alpha, shift if shift is not None else alpha, weight.contiguous(), dx,
            dw_part, db_part, da_part, ds_part, M, N, F=f, DF=df, **flags,
            PRECISE=x.dtype == torch.float32, FAST=not INTERPRETED,
            ROWS_PER_PROG=cfg.rows_per_prog,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
        )  # fmt: skip
        block = max(1, min(triton.next_power_of_2(N), 4096 // rows))
        _bwd_sum_kernel[(triton.cdiv(N, block),)](
            dw_part, db_part, da_part, ds_part, dw, db if db is not None else dw, da,
            ds if ds is not None else da, n_row, N, n_row * n_col, **flags, ROWS=rows,
            BLOCK=block, SLOTS=triton.next_power_of_2(n_row * n_col),
        )  # fmt: skip
    return dx, da, ds, dw, db
