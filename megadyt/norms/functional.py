"""The formulas: y = γ·f(αx+s)+β for any squashing function, and the RMSNorm baseline.

`squash_reference` is the plain differentiable definition (tests compare every faster path
against it, and inside an outer torch.compile it is what inductor fuses). `squash` computes the
same through the fastest correct implementation for the tensor (`impl="auto"`) or the one named:
"reference", "compiled" (torch.compile'd fused bodies) or "triton" (hand-written GPU kernels);
see megadyt.norms.dispatch. Low-precision inputs (bf16/fp16) are computed in fp32 and returned
in the input dtype, because tanh/erf saturate and lose their small slopes in bf16.
"""

from __future__ import annotations

import torch

from megadyt.norms.dispatch import resolve_impl, run_fused
from megadyt.norms.squashing import SquashingFunction

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def squash_reference(
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`weight * f(alpha * x (+ shift)) (+ bias)`, broadcasting weight over the last dim."""
    dtype = _compute_dtype(x)
    z = alpha.to(dtype) * x.to(dtype)
    if shift is not None:
        z = z + shift.to(dtype)
    y = weight.to(dtype) * function.f(z)
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype)


def squash(
    function: SquashingFunction,
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """`squash_reference`'s result through the fastest path for x (or the named `impl`)."""
    chosen = resolve_impl(impl, function, x, alpha, shift, weight, bias)
    if chosen == "reference":
        return squash_reference(function, x, alpha, shift, weight, bias)
    return run_fused(chosen, function, x, alpha, shift, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm baseline, `x / rms(x) * weight`, in fp32 for low-precision inputs."""
    dtype = _compute_dtype(x)
    y = torch.nn.functional.rms_norm(x.to(dtype), (x.shape[-1],), weight.to(dtype), eps)
    return y.to(x.dtype)
