"""DyT/Derf forward and backward bodies compiled by torch.compile (inductor's C++ backend).

Why: eager DyT runs 3 ops forward (αx, tanh, γ·t+β) and ~8 backward, each reading and writing a
full activation and allocating a fresh buffer -- on CPU the page faults of those allocations cost
as much as the math. Compiled, the forward is one loop (read x, write y) and the backward two
(dx with dα/ds; then dγ/dβ), recomputing f(αx+s) from x instead of saving it. The bodies below
are also the eager fallback: identical math, just unfused. (On CUDA tensors, impl="compiled"
runs the same bodies through inductor's Triton backend; "triton" is the hand-written kernels.)

Compilation is lazy (first call per (kind, pass, dtypes) key), `dynamic=True` so new token
counts do not recompile, and each key gets its own copy of the body's code object because
dynamo's recompile limit is counted per code object. To keep the number of compiled graphs (and
compile time) down, a missing bias is passed as zeros, and sizes 0/1 -- which dynamo would
specialise and recompile for -- run the eager bodies (they are tiny). If compiling fails once
(no C++ compiler, unsupported platform), we warn once, remember, and run the eager bodies.
"""

from __future__ import annotations

import math
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

Grads = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------- bodies (fp32 math, 2-D x)


def _tanh(z):
    """tanh as a rational function (Eigen's ptanh_float): mul/add/div only, which inductor
    vectorizes to ~4x the speed of its Sleef tanh. Max error ~3.3e-7 relative (torch.tanh
    ~1.2e-7); exactly ±1 beyond |z| = 7.9, exactly z below |z| = 4e-4 (so ±0 and NaN pass).
    """
    x = z.clamp(-7.90531110763549805, 7.90531110763549805)
    x2 = x * x
    p = x2 * -2.76076847742355e-16 + 2.00018790482477e-13
    p = p * x2 + -8.60467152213735e-11
    p = p * x2 + 5.12229709037114e-08
    p = p * x2 + 1.48572235717979e-05
    p = p * x2 + 6.37261928875436e-04
    p = (p * x2 + 4.89352455891786e-03) * x
    q = x2 * 1.19825839466702e-06 + 1.18534705686654e-04
    q = q * x2 + 2.26843463243900e-03
    q = q * x2 + 4.89352518554385e-03
    a = z.abs()
    t = torch.where(a < 4e-4, z, p / q)
    return torch.where(a > 7.90531110763549805, torch.sign(z), t)


def _dyt_forward(x, alpha, weight, bias):
    return (weight.float() * _tanh(alpha.float() * x.float()) + bias.float()).to(x.dtype)


def _derf_forward(x, alpha, shift, weight, bias):
    z = alpha.float() * x.float() + shift.float()
    return (weight.float() * torch.erf(z) + bias.float()).to(x.dtype)


# The backward is two compiled functions, measured ~1.3-1.6x faster on CPU than one graph:
# inductor fuses a graph with both into a single loop over columns (strided, cache-unfriendly).
# 1) dx and, per row, the sums dα and ds need (rows are contiguous: a cheap inner reduction);
# 2) dγ, dβ: sums over rows, recomputing f(αx+s) rather than storing it.


def _col_sum(v):
    # Sum over rows in groups of 8 first: inductor then streams whole rows (measured ~1.5x).
    if v.shape[0] % 8 == 0:
        return v.view(-1, 8, v.shape[1]).sum(1).sum(0)
    return v.sum(0)


def _dyt_backward_dx(dy, x, alpha, weight):
    xf, a = x.float(), alpha.float()
    t = _tanh(a * xf)
    dz = dy.float() * weight.float() * (1.0 - t * t)  # dL/d(αx)
    return (dz * a).to(x.dtype), (dz * xf).sum(1)


def _dyt_backward_cols(dy, x, alpha):
    g = dy.float()
    return _col_sum(g * _tanh(alpha.float() * x.float())), _col_sum(g)


def _derf_backward_dx(dy, x, alpha, shift, weight):
    xf, a = x.float(), alpha.float()
    z = a * xf + shift.float()
    dz = dy.float() * weight.float() * (_TWO_OVER_SQRT_PI * torch.exp(-z * z))  # dL/dz
    return (dz * a).to(x.dtype), (dz * xf).sum(1), dz.sum(1)


def _derf_backward_cols(dy, x, alpha, shift):
    g = dy.float()
    return _col_sum(g * torch.erf(alpha.float() * x.float() + shift.float())), _col_sum(g)


# ------------------------------------------------------------------------- compile and cache


def _torch_compile(fn: Callable) -> Callable:
    """The one place that calls torch.compile (tests monkeypatch it to simulate a failure)."""
    return torch.compile(fn, dynamic=True, fullgraph=True)


def _fresh_copy(fn: Callable) -> Callable:
    """`fn` with its own code object, so each cache key has its own dynamo cache entries."""
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


_compiled: dict[tuple, Callable] = {}
_failure: str | None = None


def failure() -> str | None:
    """Why compiling failed (then the compiled path is off for this process), else None."""
    return _failure


def available() -> bool:
    """Whether the compiled path can be tried: dynamo supports this Python and nothing failed."""
    return _failure is None and torch._dynamo.is_dynamo_supported()


def reset() -> None:
    """Forget compiled functions and any recorded failure (for tests and benchmarks)."""
    global _failure
    _compiled.clear()
    _failure = None


def _run(key: tuple, body: Callable, x: torch.Tensor, *args):
    """`body(*args)`, compiled for `key` on first use; eager `body` once compiling has failed."""
    global _failure
    if _failure is None and min(x.shape) > 1:
        try:
            fn = _compiled.get(key)
            if fn is None:
                fn = _compiled[key] = _torch_compile(_fresh_copy(body))
            # Detached: dynamo guards on requires_grad, which would recompile per combination.
            return fn(*(a.detach() if a is not None else None for a in args))
        except Exception as err:  # noqa: BLE001 - any compile failure means: use the formula
            _failure = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            warnings.warn(
                "megadyt: torch.compile of the fused DyT/Derf CPU path failed; using the plain "
                f"formula for the rest of this process ({_failure})",
                RuntimeWarning,
                stacklevel=4,
            )
    return body(*args)


# ------------------------------------------------------------------------------ backend API


@dataclass(frozen=True)
class CpuBodies:
    """One norm's eager bodies: forward(x, α, [s,] γ, β) -> y; backward_dx(dy, x, α, [s,] γ) ->
    (dx, dα per row[, ds per row]); backward_cols(dy, x, α[, s]) -> (dγ, dβ). `s` is passed
    only when the norm's registry entry says it has a shift."""

    forward: Callable
    backward_dx: Callable
    backward_cols: Callable


DYT = CpuBodies(_dyt_forward, _dyt_backward_dx, _dyt_backward_cols)
DERF = CpuBodies(_derf_forward, _derf_backward_dx, _derf_backward_cols)


def _kernels(kind: str):
    # Imported here: the registry imports this module (through layers and dispatch).
    from megadyt.norms.registry import fused_kernels

    return fused_kernels(kind)  # MegadytError for an unknown norm or one without kernels


def forward(
    kind: str,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """y = γ·f(αx+s)+β for 2-D contiguous `x`, in x's dtype; `kind` is a registered norm name."""
    kernels = _kernels(kind)
    if bias is None:
        bias = torch.zeros_like(weight)
    key = (kind, "fwd", x.dtype, weight.dtype, bias.dtype)
    scalars = (alpha, shift) if kernels.shift else (alpha,)
    return _run(key, kernels.cpu.forward, x, x, *scalars, weight, bias)


def backward(
    kind: str,
    dy: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
) -> Grads:
    """(dx, dα, ds or None, dγ, dβ); dx in x's dtype, parameter grads in fp32."""
    kernels = _kernels(kind)
    key_dx = (kind, "bwd_dx", x.dtype, dy.dtype, weight.dtype)
    key_cols = (kind, "bwd_cols", x.dtype, dy.dtype)
    scalars = (alpha, shift) if kernels.shift else (alpha,)
    dx, da_rows, *ds_rows = _run(key_dx, kernels.cpu.backward_dx, x, dy, x, *scalars, weight)
    dw, db = _run(key_cols, kernels.cpu.backward_cols, x, dy, x, *scalars)
    ds = ds_rows[0].sum().reshape(1) if kernels.shift else None
    return dx, da_rows.sum().reshape(1), ds, dw, db
