"""Dynamic erf, y = γ·erf(αx+s)+β ("Stronger Normalization-Free Transformers", 2025).

α and s are learnable scalars (init α₀ and `model.derf_shift_init`, 0 by default); the paper
found a per-channel s no better and removing s worse. A `SquashingNorm` with f = erf and a shift;
`derf`/`derf_reference` are its formula as functions.
"""

from __future__ import annotations

import math

import torch

from megadyt.norms.functional import squash, squash_reference
from megadyt.norms.layers import SquashingNorm
from megadyt.norms.squashing import SquashingFunction

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_derivative(z: torch.Tensor, erf_z: torch.Tensor) -> torch.Tensor:
    return _TWO_OVER_SQRT_PI * torch.exp(-z * z)


ERF = SquashingFunction("erf", _erf_derivative)


def derf_reference(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`weight * erf(alpha * x + shift) (+ bias)`, the plain formula."""
    return squash_reference(ERF, x, alpha, shift, weight, bias)


def derf(
    x: torch.Tensor,
    alpha: torch.Tensor,
    shift: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """`weight * erf(alpha * x + shift) (+ bias)` via the fastest path for x (or `impl`)."""
    return squash(ERF, x, alpha, shift, weight, bias, impl)


class Derf(SquashingNorm):
    """Dynamic erf, γ·erf(αx+s)+β. `eps` is accepted for megatron-core and unused."""

    function = ERF
    has_shift = True
