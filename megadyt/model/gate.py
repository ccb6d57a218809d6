"""The SwiGLU gate's saturation: how much of each MLP's gate has gone dark.

megatron-core's MLP computes `linear_fc1(x) = [g; u]` and passes `silu(g) * u` on; under tensor
parallelism `linear_fc1` is column-split and each rank's output holds its own slice of g, then
its slice of u. SiLU saturates on one side only: for g < -4, silu(g) lies in (-0.072, 0) and
|silu′(g)| < 0.054, a tenth of silu′(0) = 0.5. Such a unit passes almost nothing forward and
almost no gradient back, to g (silu′(g)·u) or to u (silu(g)): a dead gate unit. Positive g is not
saturation (SiLU is then nearly linear). The threshold mirrors the norms' |αx+s| > 2, where
tanh′ = 0.07. Verma (2026, arXiv 2604.23434) localises LLaMA-DyT collapse to this gate, so the
saturation monitor reads it for every norm (RMSNorm twins included: the baseline to compare).

Per layer the probe stores float64 sums `[elements, Σg², saturated elements, Σ silu′(g)]`, the
same columns as a norm's, so the monitor all-reduces both in one call and divides afterwards.
Like the norms it reads at most MONITOR_MAX_ROWS token rows of one micro-batch's forward.
"""

from __future__ import annotations

import torch

from megadyt.norms.layers import monitor_sample

GATE_SATURATION_THRESHOLD = 4.0  # g < -4 counts as saturated
FC1_SUFFIX = ".mlp.linear_fc1"


def gate_display_name(module_name: str) -> str:
    """'decoder.layers.3.mlp.linear_fc1' -> 'layer3': the layer the gate belongs to."""
    name = module_name.removeprefix("module.").removesuffix(FC1_SUFFIX)
    return name.replace("decoder.layers.", "layer")


def gate_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(layer name, the MLP's linear_fc1) of every transformer layer, in forward order."""
    return [
        (gate_display_name(name), module)
        for name, module in model.named_modules()
        if name.endswith(FC1_SUFFIX)
    ]


def silu_derivative(g: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(g)
    return sig * (1.0 + g * (1.0 - sig))


def gate_sums(fc1_output: torch.Tensor) -> torch.Tensor:
    """float64 [elements, Σg², saturated elements, Σ silu′(g)] of this rank's gate slice (the
    first half of the last dimension of linear_fc1's output), over every row given."""
    g = fc1_output.detach().float()
    g = g.reshape(-1, g.shape[-1])[:, : g.shape[-1] // 2]
    count = g.new_tensor(float(g.numel()), dtype=torch.float64)
    saturated = (g < -GATE_SATURATION_THRESHOLD).sum().double()
    return torch.stack(
        [
            count,
            (g * g).sum(dtype=torch.float64),
            saturated,
            silu_derivative(g).sum(dtype=torch.float64),
        ]
    )


class GateProbe:
    """A forward hook on one linear_fc1: once armed, its next forward stores `gate_sums` of
    a row sample of the output in `sums`, then disarms. The hook costs a flag test otherwise."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.armed = False
        self.sums: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._record)

    def _record(self, module: torch.nn.Module, inputs, output) -> None:
        if not self.armed:
            return
        out = output[0] if isinstance(output, tuple) else output  # (output, bias) in megatron
        with torch.no_grad():
            self.sums = gate_sums(monitor_sample(out))
        self.armed = False

    def remove(self) -> None:
        self.handle.remove()
