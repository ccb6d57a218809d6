"""Squashing-norm forward and backward bodies compiled by torch.compile (inductor's C++ backend).

Why: eager DyT runs 3 ops forward (αx, tanh, γ·t+β) and ~8 backward, each reading and writing a
full activation and allocating a fresh buffer -- on CPU the page faults of those allocations cost
as much as the math. Compiled, the forward is one loop (read x, write y) and the backward two
(dx with dα/ds; then dγ/dβ), recomputing f(αx+s) from x instead of saving it. The bodies below
are also the eager fallback: identical math, just unfused. (On CUDA tensors, impl="compiled"
runs the same bodies through inductor's Triton backend; "triton" is the hand-written kernels.)

The bodies are built from a `SquashingFunction` (f and f′), so every squashing norm has them.
Compilation is lazy (first call per (function, shift, pass, dtypes) key), `dynamic=True` so new
token counts do not recompile, and each key gets its own copy of the body's code object because
dynamo's recompile limit is counted per code object. To keep the number of compiled graphs (and
compile time) down, a missing bias is passed as zeros, and sizes 0/1 -- which dynamo would
specialise and recompile for -- run the eager bodies (they are tiny). If compiling fails once
(no C++ compiler, unsupported platform), we warn once, remember, and run the eager bodies.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megadyt.norms.squashing import SquashingFunction

Grads = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CpuBodies:
    """One squashing function's eager bodies: forward(x, α, s, γ, β) -> y;
    backward_dx(dy, x, α, s, γ) -> (dx, dα per row, ds per row); backward_cols(dy, x, α, s) ->
    (dγ, dβ). `s` may be None (a norm without shift)."""

    forward: Callable
    backward_dx: Callable
    backward_cols: Callable


_bodies_cache: dict[SquashingFunction, CpuBodies] = {}


def bodies_of(function: SquashingFunction) -> CpuBodies:
    """The eager bodies of `function` (built once: each compiled key copies their code)."""
    if function not in _bodies_cache:
        _bodies_cache[function] = _bodies(function)
    return _bodies_cache[function]


# ---------------------------------------------------------------- bodies (fp32 math, 2-D x)
# Built per squashing function: f is its compiled form, df its derivative. `shift` is None for
# norms without s (the graph then has no add). The backward is two compiled functions, measured
# ~1.3-1.6x faster on CPU than one graph: inductor fuses a graph with both into a single loop
# over columns (strided, cache-unfriendly).
# 1) dx and, per row, the sums dα and ds need (rows are contiguous: a cheap inner reduction);
# 2) dγ, dβ: sums over rows, recomputing f(αx+s) rather than storing it.


def _col_sum(v):
    # Sum over rows in groups of 8 first: inductor then streams whole rows (measured ~1.5x).
    if v.shape[0] % 8 == 0:
        return v.view(-1, 8, v.shape[1]).sum(1).sum(0)
    return v.sum(0)


def _preactivation(x, alpha, shift):
    z = alpha.float() * x.float()
    return z if shift is None else z + shift.float()


def _bodies(function: SquashingFunction) -> CpuBodies:
    f, df = function.compiled_form, function.derivative

    def forward(x, alpha, shift, weight, bias):
        return (weight.float() * f(_preactivation(x, alpha, shift)) + bias.float()).to(x.dtype)

    def backward_dx(dy, x, alpha, shift, weight):
        xf, a = x.float(), alpha.float()
        z = _preactivation(x, alpha, shift)
        dz = dy.float() * weight.float() * df(z, f(z))  # dL/dz, z = αx+s
        return (dz * a).to(x.dtype), (dz * xf).sum(1), None if shift is None else dz.sum(1)

    def backward_cols(dy, x, alpha, shift):
        g = dy.float()
        return _col_sum(g * f(_preactivation(x, alpha, shift))), _col_sum(g)

    return CpuBodies(forward, backward_dx, backward_cols)


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


def forward(
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """y = γ·f(αx+s)+β for 2-D contiguous `x`, in x's dtype."""
    if bias is None:
        bias = torch.zeros_like(weight)
    shifted = shift is not None
    key = (function, shifted, "fwd", x.dtype, weight.dtype, bias.dtype)
    return _run(key, bodies_of(function).forward, x, x, alpha, shift, weight, bias)


def backward(
    function: SquashingFunction,
    dy: torch.Tensor,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> Grads:
    """(dx, dα, ds or None, dγ, dβ); dx in x's dtype, parameter grads in fp32. dβ comes
    whether or not there is a `bias` (one compiled graph for both)."""
    bodies, shifted = bodies_of(function), shift is not None
    key_dx = (function, shifted, "bwd_dx", x.dtype, dy.dtype, weight.dtype)
    key_cols = (function, shifted, "bwd_cols", x.dtype, dy.dtype)
    dx, da_rows, ds_rows = _run(key_dx, bodies.backward_dx, x, dy, x, alpha, shift, weight)
    dw, db = _run(key_cols, bodies.backward_cols, x, dy, x, alpha, shift)
    ds = ds_rows.sum().reshape(1) if shifted else None
    return dx, da_rows.sum().reshape(1), ds, dw, db
