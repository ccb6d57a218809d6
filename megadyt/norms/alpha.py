"""The per-role, per-width α₀ rule for DyT/Derf in LLaMA-style models.

The paper (Tables 10/11) tuned α₀ for attention norms and for the other norms (FFN, final) at
five widths and found it independent of depth. Between listed widths we interpolate
geometrically (linear in log width vs log α₀), since the table spans a factor of 20 in α₀.
Below the narrowest row (1024) we extrapolate as α₀ ∝ 1/width from that row -- the slope of the
table's own FFN column from 1024 to 2048 -- because clamping to the 1024 row was measured to make
DyT 36% worse than RMSNorm at width 256 (docs/dyt-at-small-scale.md). Above the widest
row (8192) we hold the 8192 values: the table gives no trend to extrapolate safely.

Narrow models calibrate α instead (`model.alpha_init: calibrate`, α = c / std of the norm's
input), and the constant c depends on how long the run is planned to be: the run-length rule
below, measured on the tiny twins (docs/regime.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# width: (alpha0 for attention norms, alpha0 for FFN and final norms)
PAPER_ALPHA0_TABLE: dict[int, tuple[float, float]] = {
    1024: (1.0, 1.0),
    2048: (1.0, 0.5),
    4096: (0.8, 0.2),
    5120: (0.6, 0.15),
    8192: (0.2, 0.05),
}

ROLES = ("attention", "ffn", "final")

# The calibration constants c (attention norms, other norms) by planned tokens per parameter.
# A smaller α costs short runs (+1.7% valid loss at 0.3 tokens/param on four seeds) and lets
# long ones learn in-context copying, which the larger α blocks (-0.7% at 2, -1.1% at 3, -9.3%
# at 10). At 1 the two are equal (-0.4% and -0.0% on two seed pairs): the switch lies in 1..2.
SHORT_RUN_CALIBRATION = (2.0, 1.0)
LONG_RUN_CALIBRATION = (1.0, 0.5)
LONG_RUN_FROM_TOKENS_PER_PARAM = 2.0


def _geometric(width: int, lo: int, hi: int, a_lo: float, a_hi: float) -> float:
    t = (math.log(width) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return math.exp(math.log(a_lo) + t * (math.log(a_hi) - math.log(a_lo)))


def alpha0_for_width(width: int) -> tuple[float, float]:
    """Return (α₀ attention, α₀ other) for a model of hidden size `width`."""
    widths = sorted(PAPER_ALPHA0_TABLE)
    if width in PAPER_ALPHA0_TABLE:
        return PAPER_ALPHA0_TABLE[width]
    if width < widths[0]:
        scale = widths[0] / width
        attention, other = PAPER_ALPHA0_TABLE[widths[0]]
        return attention * scale, other * scale
    if width > widths[-1]:
        return PAPER_ALPHA0_TABLE[widths[-1]]
    for lo, hi in zip(widths, widths[1:]):
        if lo < width < hi:
            (att_lo, oth_lo), (att_hi, oth_hi) = PAPER_ALPHA0_TABLE[lo], PAPER_ALPHA0_TABLE[hi]
            return (
                _geometric(width, lo, hi, att_lo, att_hi),
                _geometric(width, lo, hi, oth_lo, oth_hi),
            )
    raise AssertionError(f"unreachable: width {width}")


@dataclass(frozen=True)
class Alpha0:
    """α₀ per norm role, with where each value came from ("config" or "width rule")."""

    attention: float
    ffn: float
    final: float
    sources: dict[str, str]


def resolve_alpha0(
    width: int,
    attention: float | None = None,
    ffn: float | None = None,
    final: float | None = None,
) -> Alpha0:
    """α₀ for each role: the configured value where given, else the width rule."""
    rule_attention, rule_other = alpha0_for_width(width)
    chosen = {"attention": attention, "ffn": ffn, "final": final}
    rule = {"attention": rule_attention, "ffn": rule_other, "final": rule_other}
    values = {r: chosen[r] if chosen[r] is not None else rule[r] for r in ROLES}
    sources = {r: "config" if chosen[r] is not None else "width rule" for r in ROLES}
    return Alpha0(sources=sources, **values)


def calibration_for_run_length(tokens_per_param: float) -> tuple[float, float]:
    """Return the calibration constants (c attention, c other) for a run planned to train
    `tokens_per_param` tokens per parameter: the run-length rule above."""
    if tokens_per_param >= LONG_RUN_FROM_TOKENS_PER_PARAM:
        return LONG_RUN_CALIBRATION
    return SHORT_RUN_CALIBRATION
