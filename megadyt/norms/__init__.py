"""Normalization replacements (DyT, Derf) and the RMSNorm baseline, for megatron-core.

Which norms exist, and what the rest of megadyt knows about each, is `megadyt.norms.registry`.
"""

from megadyt.norms.alpha import PAPER_ALPHA0_TABLE, alpha0_for_width, resolve_alpha0
from megadyt.norms.derf import ERF, Derf, derf, derf_reference
from megadyt.norms.dispatch import IMPLS as NORM_IMPLS
from megadyt.norms.dyt import TANH, DyT, dyt, dyt_reference
from megadyt.norms.functional import rms_norm, squash, squash_reference
from megadyt.norms.layers import RMSNorm, SquashingNorm, tp_summed
from megadyt.norms.registry import NORMS, NormEntry, entry_of, norm_classes, norm_entry
from megadyt.norms.squashing import SquashingFunction

__all__ = [
    "ERF",
    "NORMS",
    "NORM_IMPLS",
    "PAPER_ALPHA0_TABLE",
    "TANH",
    "Derf",
    "DyT",
    "NormEntry",
    "RMSNorm",
    "SquashingFunction",
    "SquashingNorm",
    "alpha0_for_width",
    "derf",
    "derf_reference",
    "dyt",
    "dyt_reference",
    "entry_of",
    "norm_classes",
    "norm_entry",
    "resolve_alpha0",
    "rms_norm",
    "squash",
    "squash_reference",
    "tp_summed",
]
