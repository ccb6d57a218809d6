"""The per-role, per-width α₀ rule for DyT/Derf in LLaMA-style models.

The paper (Tables 10/11) tuned α₀ for attention norms and for the other norms (FFN, final) at
five widths and found it independent of depth. Between listed widths we interpolate
geometrically (linear in log width vs log α₀), since the table spans a factor of 20 in α₀.
Below the narrowest row (1024) we extrapolate as α₀ ∝ 1/width from that row -- the slope of the
table's own FFN column from 1024 to 2048 -- because clamping to the 1024 row was measured to make
DyT 36% worse than RMSNorm at width 256 (docs/dyt-at-small-scale.md). Above the widest
row (8192) we hold the 8192 values: the table gives no trend to extrapolate safely.
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
