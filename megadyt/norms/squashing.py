"""What a squashing norm's function is, as its kernels and exports need it: y = γ·f(αx+s)+β.

A `SquashingFunction` names a torch elementwise function (`torch.tanh`, `torch.erf`, ...) and
gives its derivative. That is all the fused CPU path (torch.compile), the autograd Function, the
saturation monitor and the Hugging Face export need, so a new squashing norm brings its
function here and no kernel code. Hand-written Triton kernels are optional
(`triton_math.TRITON_FUNCTIONS`); without them CUDA runs the compiled path (inductor's Triton).
This module imports only torch: everything in `norms` may import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# |αx+s| above this counts as saturated: tanh′(2) = 0.07, erf′(2) = 0.02 (of 1 and 1.13 at 0).
SATURATION_THRESHOLD = 2.0


@dataclass(frozen=True)
class SquashingFunction:
    """f in y = γ·f(αx+s)+β.

    `name` is the torch function computing f (`getattr(torch, name)`): the reference formula,
    and what the exported Hugging Face model computes. `derivative(z, f(z))` is f′(z) (taking
    f(z) lets tanh′ = 1 - tanh² reuse it). `fast`, when given, is a form of f equal to it within
    fp32 rounding that the CPU compiler turns into faster code (e.g. tanh as a rational function).
    """

    name: str
    derivative: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    fast: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not callable(getattr(torch, self.name, None)):
            raise ValueError(f"squashing function {self.name!r} is not a torch function")

    @property
    def f(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return getattr(torch, self.name)

    @property
    def compiled_form(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The form of f the fused CPU bodies use."""
        return self.fast or self.f

    def saturation(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(saturated count, Σ f′(u)) of the pre-activation u = αx+s: the monitor's statistic."""
        slope = self.derivative(u, self.f(u))
        return (u.abs() > SATURATION_THRESHOLD).sum().double(), slope.sum(dtype=torch.float64)
