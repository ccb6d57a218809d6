"""DyT, Derf and RMSNorm as megatron-core norm modules, tensor- and sequence-parallel ready.

Each class has the constructor megatron-core's TransformerLayer/TransformerBlock use for norms,
`(config, hidden_size, eps=..., **kwargs)`, so it plugs into a ModuleSpec. Extra arguments
(`alpha0`, `shift0`, `bias`, `impl`) come through `ModuleSpec(params=...)`; `impl` picks the
DyT/Derf implementation ("auto", "reference", "compiled", "triton"; see megadyt.norms.dispatch).

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
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.norms.dispatch import validate_impl
from megadyt.norms.functional import derf, dyt, rms_norm


def mark_sequence_parallel(module: torch.nn.Module, enabled: bool) -> None:
    """Tag the module's own parameters with megatron-core's `sequence_parallel` marker."""
    for param in module.parameters(recurse=False):
        param.sequence_parallel = enabled


def tp_summed(param: torch.Tensor | None, sequence_parallel: bool) -> torch.Tensor | None:
    """`param` in forward; under SP its gradient is all-reduced over the TP group in backward."""
    if param is None or not sequence_parallel:
        return param
    return copy_to_tensor_model_parallel_region(param)


class _ElementwiseNorm(torch.nn.Module):
    """Shared parameters of DyT and Derf: α (scalar), γ (per channel), optional β."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        alpha0: float,
        bias: bool,
        impl: str = "auto",
    ) -> None:
        super().__init__()
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

    def extra_repr(self) -> str:
        return (
            f"{self.hidden_size}, alpha0={self.alpha0}, bias={self.bias is not None}, "
            f"impl={self.impl!r}"
        )


class DyT(_ElementwiseNorm):
    """Dynamic Tanh, γ·tanh(αx)+β. `eps` is accepted for megatron-core and unused."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        alpha0: float = 0.5,
        bias: bool = False,
        impl: str = "auto",
        **kwargs,
    ) -> None:
        super().__init__(config, hidden_size, alpha0, bias, impl)
        mark_sequence_parallel(self, self.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, weight, bias = self._params()
        return dyt(x, alpha, weight, bias, impl=self.impl)


class Derf(_ElementwiseNorm):
    """Dynamic erf, γ·erf(αx+s)+β, with scalar α (init alpha0) and scalar s (init shift0)."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        alpha0: float = 0.5,
        shift0: float = 0.0,
        bias: bool = False,
        impl: str = "auto",
        **kwargs,
    ) -> None:
        super().__init__(config, hidden_size, alpha0, bias, impl)
        self.shift = torch.nn.Parameter(torch.full((1,), float(shift0), dtype=config.params_dtype))
        mark_sequence_parallel(self, self.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, weight, bias = self._params()
        shift = tp_summed(self.shift, self.sequence_parallel)
        return derf(x, alpha, shift, weight, bias, impl=self.impl)


class RMSNorm(torch.nn.Module):
    """The RMSNorm baseline; unlike megatron-core's WrappedTorchNorm it supports SP."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **kwargs):
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.sequence_parallel = bool(config.sequence_parallel)
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        mark_sequence_parallel(self, self.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, tp_summed(self.weight, self.sequence_parallel), self.eps)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"
