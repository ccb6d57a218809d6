"""The one table of norms: everything the rest of megadyt needs to know about each of them.

Each consumer (the model spec, parameter counting, `megadyt info`, the config defaults, α
calibration, the saturation monitor, the Hugging Face export) reads the norm's `NormEntry`;
`norm_entry` refuses an unknown name with a one-line `MegadytError`. Only this module maps a
`model.norm` name to code.

What the module class itself provides (the entry reads it rather than repeating it): the
constructor megatron-core calls, `(config, hidden_size, eps=..., **spec params)`; `squashing`
(True for norms with α: they get the embedding scalar by default, α calibration, the
saturation metrics); and for squashing norms their `function` (a `SquashingFunction`, which is
all their kernels need) and `has_shift`.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megadyt.config.schema import ModelConfig, NormName
from megadyt.errors import MegadytError
from megadyt.norms.alpha import resolve_alpha0
from megadyt.norms.derf import Derf
from megadyt.norms.dyt import DyT
from megadyt.norms.layers import RMSNorm, SquashingNorm
from megadyt.norms.squashing import SquashingFunction

# transformers' own LlamaForCausalLM uses this norm: a model with it (and no embedding scalar)
# exports without custom code, and an imported plain LLaMA has it.
LLAMA_NORM = "rmsnorm"


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

    @property
    def squashing(self) -> bool:
        """Has α: the embedding scalar by default, α calibration, saturation metrics."""
        return bool(getattr(self.cls, "squashing", False))

    @property
    def function(self) -> SquashingFunction | None:
        """f of a squashing norm (what its kernels and the HF export compute); else None."""
        return getattr(self.cls, "function", None)

    @property
    def has_shift(self) -> bool:
        return bool(getattr(self.cls, "has_shift", False))


def _squashing_params(model: ModelConfig, role: str) -> dict:
    alpha0 = resolve_alpha0(
        model.hidden_size, model.alpha0_attention, model.alpha0_ffn, model.alpha0_final
    )
    return {
        "alpha0": getattr(alpha0, role),
        "shift0": model.derf_shift_init,  # read only by norms with a shift
        "bias": model.norm_bias,
        "impl": model.norm_impl,
        "role": role,
    }


def squashing_entry(name: str, cls: type[SquashingNorm]) -> NormEntry:
    """The entry of a `SquashingNorm` subclass: its spec params, count and scalars follow from
    the class (γ, optional β, α, and s when it has a shift)."""
    scalars = ("alpha", "shift") if cls.has_shift else ("alpha",)

    def params_per_norm(m: ModelConfig) -> int:
        return m.hidden_size * (2 if m.norm_bias else 1) + len(scalars)

    return NormEntry(name, cls, _squashing_params, params_per_norm, scalars)


_ENTRIES = (
    NormEntry(LLAMA_NORM, RMSNorm, lambda m, role: {"role": role}, lambda m: m.hidden_size),  # γ
    squashing_entry("dyt", DyT),
    squashing_entry("derf", Derf),
)

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


def squashing_norms() -> tuple[str, ...]:
    """Names of the norms with α (what an RMSNorm model can be converted to)."""
    return tuple(name for name, entry in NORMS.items() if entry.squashing)


def has_embedding_scale(model: ModelConfig) -> bool:
    """Whether the model multiplies its embedding by a learnable scalar: model.embedding_scale,
    where "auto" means on for squashing norms (they have no norm to fix the input scale)."""
    if model.embedding_scale == "auto":
        return norm_entry(model.norm).squashing
    return model.embedding_scale == "on"


def norm_classes() -> tuple[type[torch.nn.Module], ...]:
    """Every registered norm class, for isinstance checks over a model's modules."""
    return tuple(entry.cls for entry in NORMS.values())


def entry_of(module: torch.nn.Module) -> NormEntry | None:
    """The entry of `module`'s class (exact class first, then a base); None for a non-norm."""
    entries = NORMS.values()
    exact = [e for e in entries if type(module) is e.cls]
    return (exact or [e for e in entries if isinstance(module, e.cls)] or [None])[0]
