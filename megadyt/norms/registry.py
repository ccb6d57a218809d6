"""The one table of norms: everything the rest of megadyt needs to know about each of them.

Why: the norm name ("rmsnorm", "dyt", "derf") used to be branched on in the model spec, the
parameter count, `megadyt info`, the config defaults and the fused kernels, and the fused paths
silently ran the other kernel for a name they did not know. Now each of those reads the norm's
`NormEntry`, and `norm_entry` refuses an unknown name with a one-line `MegadytError`.

What the module class itself provides (the entry reads it rather than repeating it): the
constructor megatron-core calls, `(config, hidden_size, eps=..., **spec params)`; `squashing`
(True for norms with α: they get the embedding scalar by default, α calibration, the
saturation metrics); and for squashing norms `saturation_stat`, u = αx+s -> (saturated count,
Σ f′(u)), which the saturation monitor sums.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megadyt.config.schema import ModelConfig, NormName
from megadyt.errors import MegadytError
from megadyt.norms import fused_cpu
from megadyt.norms.alpha import resolve_alpha0
from megadyt.norms.layers import Derf, DyT, RMSNorm

SaturationStat = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class FusedKernels:
    """One norm's fused paths, y = γ·f(αx+s)+β (see megadyt.norms.dispatch)."""

    cpu: fused_cpu.CpuBodies  # eager bodies that fused_cpu compiles on first use
    triton_erf: bool  # which f fused_triton's shared kernels compute: erf (True) or tanh
    shift: bool  # whether the kernels read s and return ds


@dataclass(frozen=True)
class NormEntry:
    """One registered norm; see the module docstring for what its class provides."""

    name: str  # the value of model.norm
    cls: type[torch.nn.Module]
    # ModuleSpec params for one slot, from the model config and the role (attention/ffn/final)
    spec_params: Callable[[ModelConfig, str], dict]
    # parameters of one norm module; counting multiplies it by the 2L+1 slots
    params_per_norm: Callable[[ModelConfig], int]
    scalars: tuple[str, ...] = ()  # scalar parameters logged as norm/<scalar>/<norm name>
    fused: FusedKernels | None = None  # None: the module never runs a fused kernel

    @property
    def squashing(self) -> bool:
        """Has α: the embedding scalar by default, α calibration, saturation metrics."""
        return bool(getattr(self.cls, "squashing", False))

    @property
    def saturation(self) -> SaturationStat | None:
        """u = αx+s -> (saturated count, Σ f′(u)); None for non-squashing norms."""
        return getattr(self.cls, "saturation_stat", None)


def _rmsnorm_params(model: ModelConfig, role: str) -> dict:
    return {"role": role}


def _dyt_params(model: ModelConfig, role: str) -> dict:
    alpha0 = resolve_alpha0(
        model.hidden_size, model.alpha0_attention, model.alpha0_ffn, model.alpha0_final
    )
    return {
        "alpha0": getattr(alpha0, role),
        "bias": model.norm_bias,
        "impl": model.norm_impl,
        "role": role,
    }


def _derf_params(model: ModelConfig, role: str) -> dict:
    return {**_dyt_params(model, role), "shift0": model.derf_shift_init}


def _gamma_beta(model: ModelConfig) -> int:
    return model.hidden_size * (2 if model.norm_bias else 1)


_ENTRIES = (
    NormEntry("rmsnorm", RMSNorm, _rmsnorm_params, lambda m: m.hidden_size),  # γ
    NormEntry(
        "dyt", DyT, _dyt_params, lambda m: _gamma_beta(m) + 1, ("alpha",),  # γ (β), α
        FusedKernels(fused_cpu.DYT, triton_erf=False, shift=False),
    ),
    NormEntry(
        "derf", Derf, _derf_params, lambda m: _gamma_beta(m) + 2, ("alpha", "shift"),  # +s
        FusedKernels(fused_cpu.DERF, triton_erf=True, shift=True),
    ),
)  # fmt: skip

NORMS: dict[str, NormEntry] = {entry.name: entry for entry in _ENTRIES}

# config.schema keeps the names as a Literal (the config layer does not import torch); a norm
# added here but not there (or the reverse) fails at import instead of at the first config.
if set(typing.get_args(NormName)) != set(NORMS):
    raise RuntimeError(
        f"megadyt.config.schema.NormName {typing.get_args(NormName)} does not match the norm "
        f"registry {tuple(NORMS)}; add the name to both"
    )


def norm_entry(name: str) -> NormEntry:
    """The registered norm `name`; a one-line MegadytError naming the known ones otherwise."""
    entry = NORMS.get(name)
    if entry is None:
        raise MegadytError(f"unknown norm {name!r}; known norms: {', '.join(NORMS)}")
    return entry


def has_embedding_scale(model: ModelConfig) -> bool:
    """Whether the model multiplies its embedding by a learnable scalar: model.embedding_scale,
    where "auto" means on for squashing norms (they have no norm to fix the input scale)."""
    if model.embedding_scale == "auto":
        return norm_entry(model.norm).squashing
    return model.embedding_scale == "on"


def fused_kernels(name: str) -> FusedKernels:
    """The fused kernels of norm `name`: what fused_cpu/fused_triton run, never another's."""
    entry = norm_entry(name)
    if entry.fused is None:
        with_kernels = ", ".join(e.name for e in NORMS.values() if e.fused is not None)
        raise MegadytError(f"norm {name!r} has no fused kernels; norms that do: {with_kernels}")
    return entry.fused


def norm_classes() -> tuple[type[torch.nn.Module], ...]:
    """Every registered norm class, for isinstance checks over a model's modules."""
    return tuple(entry.cls for entry in NORMS.values())


def entry_of(module: torch.nn.Module) -> NormEntry | None:
    """The entry of `module`'s class (exact class first, then a base); None for a non-norm."""
    entries = NORMS.values()
    exact = [e for e in entries if type(module) is e.cls]
    return (exact or [e for e in entries if isinstance(module, e.cls)] or [None])[0]
