"""Normalization replacements (DyT, Derf) and the RMSNorm baseline, for megatron-core."""

from megadyt.norms.alpha import PAPER_ALPHA0_TABLE, alpha0_for_width, resolve_alpha0
from megadyt.norms.dispatch import IMPLS as NORM_IMPLS
from megadyt.norms.functional import derf, derf_reference, dyt, dyt_reference, rms_norm
from megadyt.norms.layers import Derf, DyT, RMSNorm, tp_summed

NORM_CLASSES = {"rmsnorm": RMSNorm, "dyt": DyT, "derf": Derf}

__all__ = [
    "NORM_CLASSES",
    "NORM_IMPLS",
    "PAPER_ALPHA0_TABLE",
    "Derf",
    "DyT",
    "RMSNorm",
    "alpha0_for_width",
    "derf",
    "derf_reference",
    "dyt",
    "dyt_reference",
    "resolve_alpha0",
    "rms_norm",
    "tp_summed",
]
