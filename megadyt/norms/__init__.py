"""Normalization replacements (DyT, Derf) and the RMSNorm baseline, for megatron-core.

Which norms exist, and what the rest of megadyt knows about each, is `megadyt.norms.registry`.
"""

from megadyt.norms.alpha import PAPER_ALPHA0_TABLE, alpha0_for_width, resolve_alpha0
from megadyt.norms.dispatch import IMPLS as NORM_IMPLS
from megadyt.norms.functional import derf, derf_reference, dyt, dyt_reference, rms_norm
from megadyt.norms.layers import Derf, DyT, RMSNorm, tp_summed
from megadyt.norms.registry import NORMS, NormEntry, entry_of, norm_classes, norm_entry

# name -> module class, from the registry (kept for callers and tests that index it)

__all__ = [
    "NORMS",
    "NORM_IMPLS",
    "PAPER_ALPHA0_TABLE",
    "Derf",
    "DyT",
    "NormEntry",
    "RMSNorm",
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
    "tp_summed",
]
