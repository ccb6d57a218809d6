"""The squashing functions that replace normalization, and their public entry points.

`dyt_reference`/`derf_reference` are the plain differentiable definitions (tests compare every
faster path against them):
    dyt(x)  = weight * tanh(alpha * x) (+ bias)        -- "Transformers without Normalization"
    derf(x) = weight * erf(alpha * x + shift) (+ bias) -- "Stronger Normalization-Free Transformers"
Low-precision inputs (bf16/fp16) are computed in fp32 and returned in the input dtype, because
tanh/erf saturate and lose their small slopes in bf16.

`dyt`/`derf` compute the same thing through the fastest correct implementation for the tensor
(`impl="auto"`), or the one named: "reference", "compiled" (torch.compile'd fused kernels) or
"triton" (fused GPU kernels); see megadyt.norms.dispatch.
"""

from __future__ import annotations

import torch

from megadyt.norms.dispatch import resolve_impl, run_fused

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def dyt_reference(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dynamic Tanh: `weight * tanh(alpha * x) (+ bias)`, broadcasting weight over the last dim."""
    dtype = _compute_dtype(x)
    y = weight.to(dtype) * torch.tanh(alpha.to(dtype) * x.to(dtype))
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype)


def derf_reference(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dynamic erf: `weight * erf(alpha * x + shift) (+ bias)`."""
    dtype = _compute_dtype(x)
    y = weight.to(dtype) * torch.erf(alpha.to(dtype) * x.to(dtype) + shift.to(dtype))
    if bias is not None:
        y = y + bias.to(dtype)
    return y.to(x.dtype)


def dyt(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Dynamic Tanh, `weight * tanh(alpha * x) (+ bias)`, via the fastest path for x (or `impl`)."""
    chosen = resolve_impl(impl, x, alpha, None, weight, bias)
    if chosen == "reference":
        return dyt_reference(x, alpha, weight, bias)
    return run_fused(chosen, "dyt", x, alpha, None, weight, bias)


def derf(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Dynamic erf, `weight * erf(alpha * x + shift) (+ bias)`, via the fastest path for x."""
    chosen = resolve_impl(impl, x, alpha, shift, weight, bias)
    if chosen == "reference":
        return derf_reference(x, alpha, shift, weight, bias)
    return run_fused(chosen, "derf", x, alpha, shift, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm baseline, `x / rms(x) * weight`, in fp32 for low-precision inputs."""
    dtype = _compute_dtype(x)
    y = torch.nn.functional.rms_norm(x.to(dtype), (x.shape[-1],), weight.to(dtype), eps)
    return y.to(x.dtype)
