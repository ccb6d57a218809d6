"""Choosing and running a squashing norm's implementation: reference formula, compiled, Triton.

Why a dispatcher: the fastest correct path depends on the tensor (device, dtype, size) and on
what is installed. "auto" picks Triton for CUDA tensors when triton imports, torch.compile'd
kernels for large CPU tensors when compiling works, and the plain reference formula otherwise
(always inside an outer torch.compile trace, where inductor fuses the formula itself). The fused
paths share one autograd.Function: it saves only x (f(αx+s) is recomputed in backward), is
deterministic, so megatron's activation recompute reproduces the forward exactly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from megadyt.norms import fused_cpu
from megadyt.norms.squashing import SquashingFunction

IMPLS = ("auto", "reference", "compiled", "triton")
FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Below this many elements "auto" keeps the eager formula on CPU. Measured inside a training
# step (a ~100M DyT model's forward+backward, 12 x 768, 2 cores): at 786K elements per norm
# input (2 x 512 tokens) the compiled kernels made the step 4% slower, at 3.1M (8 x 512) 6%
# faster; on a norm alone they win from ~2^18, but in a model their calls cost more than that
# shows. Tiny activations (the 1024x128 of configs/tiny) keep the formula.
CPU_AUTO_MIN_NUMEL = 1 << 21

_triton_module: ModuleType | None = None
_triton_error: str | None = None


def triton_backend() -> ModuleType | None:
    """megadyt.norms.fused_triton if triton imports, else None (the reason in triton_error())."""
    global _triton_module, _triton_error
    if _triton_module is None and _triton_error is None:
        try:
            _triton_module = importlib.import_module("megadyt.norms.fused_triton")
        except ImportError as err:  # triton missing or broken: the package still works
            _triton_error = f"{type(err).__name__}: {err}"
    return _triton_module


def triton_error() -> str | None:
    """Why triton is unavailable (after a triton_backend() call), else None."""
    return _triton_error


def validate_impl(impl: str) -> str:
    """`impl` if it is a known implementation name, else ValueError listing the valid ones."""
    if impl not in IMPLS:
        raise ValueError(f"unknown squashing-norm impl {impl!r}; valid values: {', '.join(IMPLS)}")
    return impl


def _fusable(x: torch.Tensor, alpha, shift, weight, bias) -> bool:
    """Shapes and dtypes the fused kernels handle; anything else takes the reference formula."""
    n = x.shape[-1] if x.dim() else 0
    return (
        x.dtype in FUSED_DTYPES
        and x.numel() > 0
        and alpha.numel() == 1
        and (shift is None or shift.numel() == 1)
        and weight.shape == (n,)
        and (bias is None or bias.shape == (n,))
        and all(t is None or t.device == x.device for t in (alpha, shift, weight, bias))
    )


def resolve_impl(
    impl: str,
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> str:
    """The implementation that will run: "reference", "compiled" or "triton". On CUDA, "auto"
    takes the hand-written Triton kernels where `function` has them, else the compiled path.
    Inside an outer torch.compile trace (compiled transformer layers) every impl is the
    formula: Inductor fuses it with its neighbours, which no separate kernel can."""
    validate_impl(impl)
    if torch.compiler.is_compiling():
        return "reference"
    if impl == "reference" or (
        impl == "auto" and x.device.type == "cpu" and x.numel() < CPU_AUTO_MIN_NUMEL
    ):
        return "reference"  # the common small-CPU case first: ~1 µs instead of ~5
    if impl == "triton":
        backend = triton_backend()
        if backend is None:
            raise RuntimeError(
                "impl='triton' needs the triton package (pip install 'megadyt[triton]'); "
                f"importing it failed: {_triton_error}"
            )
        if not backend.supports(function):
            raise RuntimeError(
                f"impl='triton' has no kernels for f = {function.name}; use impl='compiled' "
                "(torch.compile generates Triton code for it) or 'auto'"
            )
        if x.device.type != "cuda" and not backend.INTERPRETED:
            raise RuntimeError(
                f"impl='triton' runs on CUDA tensors (got {x.device.type}); on CPU use "
                "impl='compiled', or set TRITON_INTERPRET=1 before importing triton"
            )
    if not _fusable(x, alpha, shift, weight, bias):
        return "reference"
    if impl == "auto":
        if x.device.type == "cuda":
            backend = triton_backend()  # inductor needs triton on CUDA too
            if backend is None:
                return "reference"
            if backend.supports(function):
                return "triton"
        if fused_cpu.available() and x.device.type in ("cpu", "cuda"):
            return "compiled"
        return "reference"
    if impl == "compiled" and not fused_cpu.available():
        return "reference"  # compiling failed earlier in this process (warned then)
    return impl


class _FusedElementwiseNorm(torch.autograd.Function):
    """y = γ·f(αx+s)+β through a backend module's forward/backward (see fused_cpu)."""

    @staticmethod
    def forward(ctx, x, alpha, shift, weight, bias, function, backend):
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        y = backend.forward(function, x2d, alpha, shift, weight, bias)
        ctx.save_for_backward(x2d, alpha, shift, weight, bias)
        ctx.function, ctx.backend, ctx.x_shape = function, backend, x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, alpha, shift, weight, bias = ctx.saved_tensors
        dy2d = dy.reshape(x2d.shape).contiguous()
        dx, da, ds, dw, db = ctx.backend.backward(
            ctx.function, dy2d, x2d, alpha, shift, weight, bias
        )
        need = ctx.needs_input_grad
        return (
            dx.view(ctx.x_shape) if need[0] else None,
            da.to(alpha.dtype) if need[1] else None,
            ds.to(shift.dtype) if need[2] else None,
            dw.to(weight.dtype) if need[3] else None,
            db.to(bias.dtype) if need[4] else None,
            None,
            None,
        )


def _backend(impl: str) -> ModuleType:
    return fused_cpu if impl == "compiled" else triton_backend()


def run_fused(
    impl: str,
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """Run a resolved fused impl ("compiled" or "triton") of y = γ·f(αx+s)+β; autograd only
    when a grad is needed. The kernels receive `function` itself, never a name to look up."""
    backend = _backend(impl)
    inputs = (x, alpha, shift, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _FusedElementwiseNorm.apply(x, alpha, shift, weight, bias, function, backend)
    with torch.no_grad():  # as inside the Function (and one grad mode means one compiled graph)
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        return backend.forward(function, x2d, alpha, shift, weight, bias).view(x.shape)
