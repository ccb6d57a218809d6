"""The saturation monitor: is each DyT/Derf still passing gradient?

A squashing norm whose input outgrows 1/α runs in the flat part of tanh/erf: its output stops
depending on the input and almost no gradient reaches the layers below. At every log step the
trainer arms every norm before the first micro-batch; each norm's forward stores the sums of
its input (megadyt.norms.layers), and `collect` adds them over all ranks into, per norm:

- `norm/input_rms/NAME`: RMS of the norm's input (every norm, RMSNorm included);
- `norm/saturated/NAME`: fraction of units with |αx+s| > 2 (DyT/Derf);
- `norm/derivative/NAME`: mean tanh′ or erf′ at αx+s (DyT/Derf; 1 or 1.13 when unsaturated).

The SwiGLU gate of every layer is read the same way (megadyt.model.gate: a forward hook on its
`linear_fc1`), for every norm, RMSNorm included:

- `gate/saturated/layerN`: fraction of gate pre-activations g < -4, where silu(g) ≈ 0 and
  |silu′(g)| < 0.054: dead gate units (each TP rank reads its own column slice of the gate);
- `gate/input_rms/layerN`: RMS of g; `gate/saturated/mean`: the mean over layers.

Cost: a few float64 passes per log step over at most 1024 token rows of each norm's input and
each gate in one micro-batch, evenly strided (megadyt.norms.layers.monitor_sample): at 1B and
8K tokens a step, reading every row in float64 would cost an estimated ~25 ms a step on an H200.

The regime diagnostic (`train.regime_diagnostic_step`, default min(500, steps // 10)) reads
these once, early. Verma (2026, arXiv 2604.23434) found that the fraction of DyT units with
|αx| > 2 (our `norm/saturated`) early in training tells the regime: 49% at 1M tokens, where
DyT beat LayerNorm, against 23% at 118M, where it fell behind; their 500-step heuristic got
the sign right in 75% of their calibration cells but 50% across model scales. We log the mean
saturated fraction over the DyT/Derf norms, its side of the midpoint 36% of those two figures
(our reading, not a rule from the paper), and the gate's mean saturation, whose power to
predict is to be measured (benchmarks/regime_ladder.py), not assumed.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from megadyt.model import norm_modules
from megadyt.model.gate import GateProbe, gate_modules
from megadyt.training.metrics import MetricsWriter

SATURATED_FRACTION_ALERT = 0.9
FINAL = "final"
# The midpoint of Verma's 49% (DyT ahead, 1M tokens) and 23% (DyT behind, 118M tokens).
VERMA_MIDPOINT = 0.36


class SaturationMonitor:
    def __init__(self, model: torch.nn.Module, patience: int) -> None:
        self.norms = norm_modules(model)
        self.gates = [(name, GateProbe(module)) for name, module in gate_modules(model)]
        self.patience = patience
        self._streak = 0
        self._streak_start: int | None = None
        self.warned = False

    def arm(self) -> None:
        """Let the next forward of every norm and gate record its input statistics."""
        for _, module in self.norms:
            module.record_saturation = True
            module.saturation = None
        for _, probe in self.gates:
            probe.armed, probe.sums = True, None

    def collect(self, device: torch.device) -> dict[str, float]:
        """Sum every norm's and gate's recorded statistics over all ranks (a collective: call
        it on every rank at the same step) and return the scalars; disarms them."""
        rows = []
        for _, module in self.norms:
            module.record_saturation = False
            rows.append(module.saturation)
            module.saturation = None
        for _, probe in self.gates:
            probe.armed = False
            rows.append(probe.sums)
            probe.sums = None
        if not rows:
            return {}
        zeros = torch.zeros(4, dtype=torch.float64, device=device)
        sums = torch.stack([zeros if row is None else row.to(device) for row in rows])
        if dist.is_initialized():
            dist.all_reduce(sums)
        sums = sums.cpu()
        norm_sums, gate_sums = sums[: len(self.norms)], sums[len(self.norms) :]
        return {
            **scalars_from_sums(self.norms, norm_sums),
            **gate_scalars([name for name, _ in self.gates], gate_sums),
        }

    def diagnose(self, step: int, scalars: dict[str, float], writer: MetricsWriter) -> None:
        """One event line and record (see the module docstring); the loop calls it at the
        diagnostic step (`Cadence.diagnoses`)."""
        if not scalars:
            return
        values, detail = regime_diagnostic(scalars)
        writer.event(step, "regime_diagnostic", values, detail)

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


def gate_scalars(names: list[str], sums: torch.Tensor) -> dict[str, float]:
    """Per-layer gate metrics, and their mean, from summed [elements, Σg², saturated, Σ silu′]."""
    out: dict[str, float] = {}
    fractions = []
    for name, (count, squares, saturated, _) in zip(names, sums.tolist()):
        if count <= 0:
            continue
        out[f"gate/input_rms/{name}"] = math.sqrt(squares / count)
        out[f"gate/saturated/{name}"] = saturated / count
        fractions.append(saturated / count)
    if fractions:
        out["gate/saturated/mean"] = sum(fractions) / len(fractions)
    return out


def regime_diagnostic(scalars: dict[str, float]) -> tuple[dict[str, float], str]:
    """(the diagnostic's scalars, its one-line reading) from one sampled step's metrics."""
    norms = [v for k, v in scalars.items() if k.startswith("norm/saturated/")]
    values: dict[str, float] = {}
    parts = []
    if norms:
        mean = sum(norms) / len(norms)
        values["regime/norm_saturated"] = mean
        side = "above" if mean >= VERMA_MIDPOINT else "below"
        regime = "scarce-data (DyT ahead)" if mean >= VERMA_MIDPOINT else "data-rich (DyT behind)"
        values["regime/verma_predicts_squashing_ahead"] = float(mean >= VERMA_MIDPOINT)
        parts.append(
            f"{mean:.1%} of DyT/Derf units saturated (|αx+s| > 2), {side} the 36% between "
            f"Verma's 49% and 23%: his heuristic reads a {regime} regime"
        )
    else:
        parts.append("no DyT/Derf norm (nothing for Verma's heuristic)")
    gate = scalars.get("gate/saturated/mean")
    if gate is not None:
        values["regime/gate_saturated"] = gate
        parts.append(f"SwiGLU gate {gate:.1%} saturated (g < -4)")
    return values, "regime diagnostic: " + "; ".join(parts)
