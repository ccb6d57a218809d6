"""Set each DyT/Derf α from the scale of its measured input: α = c / std(input).

The paper (Fig. 8) found that trained α tracks 1/std of the norm's input, and that a badly
chosen α₀ can make training diverge. At small width with the paper's α₀ table extrapolated,
the final DyT saturates within tens of steps and training stalls
(docs/dyt-at-small-scale.md). Calibration measures instead of guessing: one forward pass over
one micro-batch, and each norm's α is set *as the forward reaches it* (a forward pre-hook), so
every later norm is measured downstream of already calibrated ones.

Every rank must reach the same α. Data-parallel ranks all run the same micro-batch, so they
agree by construction; under sequence parallelism each tensor-parallel rank sees a slice of the
sequence, so the sums are all-reduced over the TP group. Activations of different TP layouts
differ in the last bits (matmuls split across ranks), so α is rounded to `SIGNIFICANT_DIGITS`:
TP=1, TP=2+SP and DP=2 set the same α, and the logged values are readable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from megadyt.errors import MegadytError

SIGNIFICANT_DIGITS = 3
# Conversion from RMSNorm (`match_alpha`): the constants c tried, 1/4 to 8 in steps of 2^(1/8)
MATCH_CONSTANTS = tuple(2.0 ** (k / 8) for k in range(-16, 25))


@dataclass(frozen=True)
class CalibratedAlpha:
    """One norm's calibration record: what was measured and what α was set."""

    name: str
    role: str
    input_std: float
    constant: float
    alpha: float

    def to_dict(self) -> dict:
        return asdict(self)


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    return float(f"{value:.{digits}g}")


def input_sums(x: torch.Tensor) -> torch.Tensor:
    """float64 [elements, Σx, Σx²] of a tensor: what std needs, summable over ranks."""
    x = x.detach().double()
    return torch.stack([x.new_tensor(float(x.numel())), x.sum(), (x * x).sum()])


def std_from_sums(sums: torch.Tensor) -> float:
    count, total, squares = (float(v) for v in sums)
    mean = total / count
    return math.sqrt(max(squares / count - mean * mean, 0.0))


def _run_with_hooks(norms, hook_for, run_forward) -> None:
    """One no-grad forward with `hook_for(name)` as the pre-hook of every norm that has α."""
    handles = [
        module.register_forward_pre_hook(hook_for(name))
        for name, module in norms
        if hasattr(module, "alpha")
    ]
    try:
        with torch.no_grad():
            run_forward()
    finally:
        for handle in handles:
            handle.remove()


def _input_std(x: torch.Tensor, group: dist.ProcessGroup | None, name: str) -> float:
    sums = input_sums(x)
    if group is not None:
        dist.all_reduce(sums, group=group)
    std = std_from_sums(sums)
    if not math.isfinite(std) or std <= 0.0:
        raise MegadytError(
            f"norm {name}: its input has std {std} on the calibration batch, so α cannot "
            "be calibrated; check the data, or set model.alpha_init=rule"
        )
    return std


def calibrate_alpha(
    norms: list[tuple[str, torch.nn.Module]],
    run_forward: Callable[[], object],
    constant_for_role: Callable[[str], float],
    sequence_parallel_group: dist.ProcessGroup | None = None,
) -> list[CalibratedAlpha]:
    """Run `run_forward()` once; each norm in `norms` that has an α gets α = c / std(input).

    `norms` are (name, module) pairs; modules need `alpha` and `role`. Pass the TP group as
    `sequence_parallel_group` when sequence parallelism splits the norms' inputs."""
    records: list[CalibratedAlpha] = []

    def hook_for(name: str):
        def hook(mod, args):
            std = _input_std(args[0], sequence_parallel_group, name)
            constant = constant_for_role(mod.role)
            alpha = round_significant(constant / std)
            with torch.no_grad():
                mod.alpha.fill_(alpha)
            records.append(CalibratedAlpha(name, mod.role, std, constant, alpha))

        return hook

    _run_with_hooks(norms, hook_for, run_forward)
    return records


def match_alpha(
    norms: list[tuple[str, torch.nn.Module]],
    run_forward: Callable[[], object],
    eps: float,
    sequence_parallel_group: dist.ProcessGroup | None = None,
) -> list[CalibratedAlpha]:
    """For a model converted from RMSNorm (same γ, β = 0, s = 0): each norm's α = c/std(input)
    with c from `MATCH_CONSTANTS` chosen so that the norm's output is closest (mean squared
    error on the calibration batch) to the RMSNorm output it replaces, γ·x/rms(x). Measured in
    forward order, like `calibrate_alpha`, so later norms see already converted ones."""
    from megadyt.norms.functional import rms_norm

    records: list[CalibratedAlpha] = []

    def hook_for(name: str):
        def hook(mod, args):
            x = args[0]
            std = _input_std(x, sequence_parallel_group, name)
            target = rms_norm(x, mod.weight, eps).float()
            errors = []
            for constant in MATCH_CONSTANTS:
                mod.alpha.fill_(round_significant(constant / std))
                errors.append(((mod.forward(x).float() - target) ** 2).sum().double())
            errors = torch.stack(errors)
            if sequence_parallel_group is not None:
                dist.all_reduce(errors, group=sequence_parallel_group)
            constant = MATCH_CONSTANTS[int(errors.argmin())]
            alpha = round_significant(constant / std)
            mod.alpha.fill_(alpha)
            records.append(CalibratedAlpha(name, mod.role, std, constant, alpha))

        return hook

    _run_with_hooks(norms, hook_for, run_forward)
    return records
