"""Normalization replacements (DyT, Derf) and the RMSNorm baseline, for megatron-core."""

from megadyt.norms.alpha import PAPER_ALPHA0_TABLE, alpha0_for_width, resolve_alpha0
from megadyt.norms.functional import derf, dyt, rms_norm
from megadyt.norms.layers import Derf, DyT, RMSNorm, tp_summed

NORM_CLASSES = {"rmsnorm": RMSNorm, "dyt": DyT, "derf": Derf}

__all__ = [
    "NORM_CLASSES",
    "PAPER_ALPHA0_TABLE",
    "Derf",
    "DyT",
    "RMSNorm",
    "alpha0_for_width",
    "derf",
    "dyt",
    "resolve_alpha0",
    "rms_norm",
    "tp_summed",
]
