"""Dynamic Tanh, y = γ·tanh(αx)+β ("Transformers without Normalization", Zhu et al. 2025).

The paper's LLaMA code has no β; `model.norm_bias` adds it. The norm is a `SquashingNorm` with
f = tanh and no shift; `dyt`/`dyt_reference` are its formula as functions.
"""

from __future__ import annotations

import torch

from megadyt.norms.functional import squash, squash_reference
from megadyt.norms.layers import SquashingNorm
from megadyt.norms.squashing import SquashingFunction


def rational_tanh(z: torch.Tensor) -> torch.Tensor:
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


def _tanh_derivative(z: torch.Tensor, tanh_z: torch.Tensor) -> torch.Tensor:
    return 1.0 - tanh_z * tanh_z


TANH = SquashingFunction("tanh", _tanh_derivative, fast=rational_tanh)


def dyt_reference(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`weight * tanh(alpha * x) (+ bias)`, the plain formula."""
    return squash_reference(TANH, x, alpha, None, weight, bias)


def dyt(
    x: torch.Tensor,
    alpha: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """`weight * tanh(alpha * x) (+ bias)` via the fastest path for x (or `impl`)."""
    return squash(TANH, x, alpha, None, weight, bias, impl)


class DyT(SquashingNorm):
    """Dynamic Tanh, γ·tanh(αx)+β. `eps` is accepted for megatron-core and unused."""

    function = TANH
