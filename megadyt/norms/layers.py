"""DyT, Derf and RMSNorm as megatron-core norm modules, tensor- and sequence-parallel ready.

Each class has the constructor megatron-core's TransformerLayer/TransformerBlock use for norms,
`(config, hidden_size, eps=..., **kwargs)`, so it plugs into a ModuleSpec. Extra arguments
(`alpha0`, `shift0`, `bias`, `impl`, `role`) come through `ModuleSpec(params=...)`; `impl` picks
the DyT/Derf implementation ("auto", "reference", "compiled", "triton"; see
megadyt.norms.dispatch), `role` is the slot ("attention", "ffn" or "final") that α calibration
and the saturation monitor read.

Saturation monitor: set `record_saturation = True` and the next forward stores
`saturation_sums` of its input (at most MONITOR_MAX_ROWS token rows: `monitor_sample`) in
`saturation` (then clears the flag). It is computed inside
forward because that is where α is guaranteed whole (ZeRO-3 gathers it only around forward).

Sequence parallelism: every TP rank holds the same γ/β/α/s but sees a different slice of the
sequence, so each rank's gradient is partial. The parameters are routed through megatron-core's
`copy_to_tensor_model_parallel_region` (identity forward, all-reduce over TP backward), so their
`.grad` is already summed over the TP group when autograd finishes -- before any optimizer or
engine (DeepSpeed ZeRO hooks included) reads it. They also carry `sequence_parallel=True`, the
megatron-core marker for such parameters. Do not also run megatron-core's `finalize_model_grads`
layernorm all-reduce on these models: it would sum them a second time.
"""

from __future__ import annotations

import math

import torch
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.norms.dispatch import validate_impl
from megadyt.norms.functional import derf, dyt, rms_norm

# |αx+s| above this counts as saturated: tanh′(2) = 0.07, erf′(2) = 0.02 (of 1 and 1.13 at 0).
SATURATION_THRESHOLD = 2.0
# The saturation monitor reads at most this many token rows of each norm's input (monitor_sample).
MONITOR_MAX_ROWS = 1024


def tanh_saturation(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(saturated count, Σ tanh′(u)) of the pre-activation u = αx: DyT's monitor statistic."""
    slope = 1.0 - torch.tanh(u) ** 2
    return (u.abs() > SATURATION_THRESHOLD).sum().double(), slope.sum(dtype=torch.float64)


def erf_saturation(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(saturated count, Σ erf′(u)) of the pre-activation u = αx+s: Derf's monitor statistic."""
    slope = (2.0 / math.sqrt(math.pi)) * torch.exp(-u * u)
    return (u.abs() > SATURATION_THRESHOLD).sum().double(), slope.sum(dtype=torch.float64)


def monitor_sample(x: torch.Tensor) -> torch.Tensor:
    """At most MONITOR_MAX_ROWS token rows of x, evenly strided over all of them: what the
    saturation monitor reduces. Over every token, its float64 passes would move ~70 GB a step
    for a 1B model at 8K tokens (45 norms, ~12 passes each): ~25 ms at an H200's measured
    3.9 TB/s. A fraction and an RMS over 1024 tokens × the hidden width are as informative.
    Inputs with no more rows are taken whole."""
    rows = x.reshape(-1, x.shape[-1])
    stride = -(-rows.shape[0] // MONITOR_MAX_ROWS)
    return rows[::stride] if stride > 1 else rows


def _count(x: torch.Tensor) -> torch.Tensor:
    return x.new_tensor(float(x.numel()), dtype=torch.float64)


def mark_sequence_parallel(module: torch.nn.Module, enabled: bool) -> None:
    """Tag the module's own parameters with megatron-core's `sequence_parallel` marker."""
    for param in module.parameters(recurse=False):
        param.sequence_parallel = enabled


def tp_summed(param: torch.Tensor | None, sequence_parallel: bool) -> torch.Tensor | None:
    """`param` in forward; under SP its gradient is all-reduced over the TP group in backward."""
    if param is None or not sequence_parallel:
        return param
    return copy_to_tensor_model_parallel_region(param)


class _MonitoredNorm(torch.nn.Module):
    """What every norm offers the saturation monitor: a role, and the sums of its input."""

    squashing = False  # True for DyT/Derf: saturation and derivative are meaningful
    # u -> (saturated count, Σ f′(u)) for squashing norms (see tanh_saturation); None otherwise.
    saturation_stat = None

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self.record_saturation = False
        self.saturation: torch.Tensor | None = None

    def saturation_sums(self, x: torch.Tensor) -> torch.Tensor:
        """float64 [elements, Σx², saturated elements, Σ f′(αx+s)] of this input; the monitor
        adds them over ranks before dividing. The base (RMSNorm) has no squashing: zeros.
        Elementwise math is float32 (in float64 the monitor cost DyT 15% of its training speed
        on the tiny config on CPU); the sums accumulate in float64."""
        x = x.detach().float()
        zero = x.new_zeros((), dtype=torch.float64)
        return torch.stack([_count(x), (x * x).sum(dtype=torch.float64), zero, zero])

    def _maybe_record(self, x: torch.Tensor) -> None:
        if self.record_saturation:
            with torch.no_grad():
                self.saturation = self.saturation_sums(monitor_sample(x))
            self.record_saturation = False


class _ElementwiseNorm(_MonitoredNorm):
    """Shared parameters of DyT and Derf: α (scalar), γ (per channel), optional β."""

    squashing = True

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        alpha0: float,
        bias: bool,
        impl: str = "auto",
        role: str = "attention",
    ) -> None:
        super().__init__(role)
        dtype = config.params_dtype
        self.hidden_size = hidden_size
        self.alpha0 = alpha0
        self.impl = validate_impl(impl)
        self.sequence_parallel = bool(config.sequence_parallel)
        self.alpha = torch.nn.Parameter(torch.full((1,), float(alpha0), dtype=dtype))
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=dtype)) if bias else None

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        sp = self.sequence_parallel
        return tp_summed(self.alpha, sp), tp_summed(self.weight, sp), tp_summed(self.bias, sp)

    def _preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """αx (+s for Derf) in float32, for the monitor only."""
        return x * self.alpha.detach().float()

    def saturation_sums(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        saturated, slope = self.saturation_stat(self._preactivation(x))
        return torch.stack([_count(x), (x * x).sum(dtype=torch.float64), saturated, slope])

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, alpha0={self.alpha0}, bias={self.bias is not None}, "
            f"impl={self.impl!r}"
        )


class DyT(_ElementwiseNorm):
    """Dynamic Tanh, γ·tanh(αx)+β. `eps` is accepted for megatron-core and unused."""

    saturation_stat = staticmethod(tanh_saturation)

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        alpha0: float = 0.5,
        bias: bool = False,
        impl: str = "auto",
        role: str = "attention",
        **kwargs,
    ) -> None:
        super().__init__(config, hidden_size, alpha0, bias, impl, role)
        mark_sequence_parallel(self, self.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._maybe_record(x)
        alpha, weight, bias = self._params()
        return dyt(x, alpha, weight, bias, impl=self.impl)


class Derf(_ElementwiseNorm):
    """Dynamic erf, γ·erf(αx+s)+β, with scalar α (init alpha0) and scalar s (init shift0)."""

    saturation_stat = staticmethod(erf_saturation)

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        alpha0: float = 0.5,
        shift0: float = 0.0,
        bias: bool = False,
        impl: str = "auto",
        role: str = "attention",
        **kwargs,
    ) -> None:
        super().__init__(config, hidden_size, alpha0, bias, impl, role)
        self.shift = torch.nn.Parameter(torch.full((1,), float(shift0), dtype=config.params_dtype))
        mark_sequence_parallel(self, self.sequence_parallel)

    def _preactivation(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha.detach().float() + self.shift.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._maybe_record(x)
        alpha, weight, bias = self._params()
        shift = tp_summed(self.shift, self.sequence_parallel)
        return derf(x, alpha, shift, weight, bias, impl=self.impl)


class RMSNorm(_MonitoredNorm):
    """The RMSNorm baseline; unlike megatron-core's WrappedTorchNorm it supports SP."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        role: str = "attention",
        **kwargs,
    ):
        super().__init__(role)
        self.hidden_size = hidden_size
        self.eps = eps
        self.sequence_parallel = bool(config.sequence_parallel)
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        mark_sequence_parallel(self, self.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._maybe_record(x)
        return rms_norm(x, tp_summed(self.weight, self.sequence_parallel), self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"
