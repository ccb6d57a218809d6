"""The megatron-core norm modules: the squashing-norm base (DyT, Derf, ...) and RMSNorm.

Tensor- and sequence-parallel ready. Each class has the constructor megatron-core's
TransformerLayer/TransformerBlock use for norms, `(config, hidden_size, eps=..., **kwargs)`, so
it plugs into a ModuleSpec. Extra arguments
(`alpha0`, `shift0`, `bias`, `impl`, `role`) come through `ModuleSpec(params=...)`; `impl` picks
the squashing norm's implementation ("auto", "reference", "compiled", "triton"; see
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

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.norms.dispatch import validate_impl
from megadyt.norms.functional import rms_norm, squash
from megadyt.norms.squashing import SquashingFunction

# The saturation monitor reads at most this many token rows of each norm's input (monitor_sample).
MONITOR_MAX_ROWS = 1024


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
    """`param` in forward; under SP its gradient is all-reduced over the TP group in backward.
    The group is named: megatron-core's lookup of a missing one warns, which splits a compiled
    transformer layer's graph."""
    if param is None or not sequence_parallel:
        return param
    group = parallel_state.get_tensor_model_parallel_group()
    return copy_to_tensor_model_parallel_region(param, group=group)


class MonitoredNorm(torch.nn.Module):
    """What every norm offers the saturation monitor: a role, and the sums of its input."""

    squashing = False  # True for squashing norms: saturation and derivative are meaningful

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


class SquashingNorm(MonitoredNorm):
    """y = γ·f(αx+s)+β with a scalar α (init alpha0), per-channel γ (init 1), optional β, and a
    scalar s (init shift0) when the subclass sets `has_shift`. A subclass names its
    `SquashingFunction`; everything else (TP/SP, dispatch, the monitor) is here."""

    squashing = True
    function: SquashingFunction  # set by each subclass
    has_shift = False

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        alpha0: float = 0.5,
        bias: bool = False,
        impl: str = "auto",
        role: str = "attention",
        shift0: float = 0.0,
        **kwargs,
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
        if self.has_shift:  # norms without s have no `shift` attribute at all
            self.shift = torch.nn.Parameter(torch.full((1,), float(shift0), dtype=dtype))
        mark_sequence_parallel(self, self.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._maybe_record(x)
        sp = self.sequence_parallel
        return squash(
            self.function,
            x,
            tp_summed(self.alpha, sp),
            tp_summed(self._shift(), sp),
            tp_summed(self.weight, sp),
            tp_summed(self.bias, sp),
            impl=self.impl,
        )

    def _shift(self) -> torch.nn.Parameter | None:
        return self.shift if self.has_shift else None

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """αx+s in float32 (for the monitor only)."""
        u = x.float() * self.alpha.detach().float()
        return u + self.shift.detach().float() if self.has_shift else u

    def saturation_sums(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float()
        saturated, slope = self.function.saturation(self.preactivation(x))
        return torch.stack([_count(x), (x * x).sum(dtype=torch.float64), saturated, slope])

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, f={self.function.name}, alpha0={self.alpha0}, "
            f"bias={self.bias is not None}, impl={self.impl!r}"
        )


class RMSNorm(MonitoredNorm):
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
