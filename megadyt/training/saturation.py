"""The saturation monitor: is each DyT/Derf still passing gradient?

A squashing norm whose input outgrows 1/α runs in the flat part of tanh/erf: its output stops
depending on the input and almost no gradient reaches the layers below. At every log step the
trainer arms every norm before the first micro-batch; each norm's forward stores the sums of
its input (megadyt.norms.layers), and `collect` adds them over all ranks into, per norm:

- `norm/input_rms/NAME`: RMS of the norm's input (every norm, RMSNorm included);
- `norm/saturated/NAME`: fraction of units with |αx+s| > 2 (DyT/Derf);
- `norm/derivative/NAME`: mean tanh′ or erf′ at αx+s (DyT/Derf; 1 or 1.13 when unsaturated).

Cost: a few float64 passes per log step over at most 1024 token rows of each norm's input in
one micro-batch, evenly strided (megadyt.norms.layers.monitor_sample): at 1B and 8K tokens a
step, reading every row in float64 would cost an estimated ~25 ms a step on an H200.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megadyt.model import norm_modules

SATURATED_FRACTION_ALERT = 0.9
FINAL = "final"


class SaturationMonitor:
    def __init__(self, model: torch.nn.Module, patience: int) -> None:
        self.norms = norm_modules(model)
        self.patience = patience
        self._streak = 0
        self._streak_start: int | None = None
        self.warned = False

    def arm(self) -> None:
        """Let the next forward of every norm record its input statistics."""
        for _, module in self.norms:
            module.record_saturation = True
            module.saturation = None

    def collect(self, device: torch.device) -> dict[str, float]:
        """Sum every norm's recorded statistics over all ranks (a collective: call it on every
        rank at the same step) and return the scalars; disarms the norms."""
        rows = []
        for _, module in self.norms:
            module.record_saturation = False
            rows.append(
                module.saturation.to(device)
                if module.saturation is not None
                else torch.zeros(4, dtype=torch.float64, device=device)
            )
            module.saturation = None
        if not rows:
            return {}
        sums = torch.stack(rows)
        if dist.is_initialized():
            dist.all_reduce(sums)
        return scalars_from_sums(self.norms, sums.cpu())

    def alert(self, step: int, scalars: dict[str, float]) -> str | None:
        """One warning line, once per run, when the final norm has stayed more than 90%
        saturated for `patience` log intervals in a row; else None."""
        fraction = scalars.get(f"norm/saturated/{FINAL}")
        if fraction is None or not fraction > SATURATED_FRACTION_ALERT:
            self._streak, self._streak_start = 0, None
            return None
        self._streak += 1
        if self._streak_start is None:
            self._streak_start = step
        if self._streak < self.patience or self.warned:
            return None
        self.warned = True
        return (
            f"the final norm has been more than {SATURATED_FRACTION_ALERT:.0%} saturated "
            f"(|αx+s| > 2) since step {self._streak_start} ({fraction:.1%} at step {step}), so "
            "little gradient passes it; remedies: model.alpha_init=calibrate, "
            "model.init_std=auto, or a smaller model.alpha0_final "
            "(see docs/dyt-at-small-scale.md)"
        )


def scalars_from_sums(norms: list[tuple[str, torch.nn.Module]], sums: torch.Tensor) -> dict:
    """Per-norm metrics from summed [elements, Σx², saturated, Σ f′] rows (one per norm)."""
    out: dict[str, float] = {}
    for (name, module), (count, squares, saturated, derivative) in zip(norms, sums.tolist()):
        if count <= 0:
            continue
        out[f"norm/input_rms/{name}"] = math.sqrt(squares / count)
        if module.squashing:
            out[f"norm/saturated/{name}"] = saturated / count
            out[f"norm/derivative/{name}"] = derivative / count
    return out
