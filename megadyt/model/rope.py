"""Rotary embedding without megatron-core's per-call cos/sin and concatenations.

megatron-core's unfused rotary path (`rope_utils._apply_rotary_pos_emb_bshd`) recomputes cos and
sin of the frequency table for every query and key of every layer, builds rotate_half(t) with a
`torch.cat`, and concatenates the result with the (empty) unrotated part: on CPU that was ~3% of
a ~100M training step. megatron-core's own switch for a better path is
`TransformerConfig.apply_rope_fusion`, which calls `rope_utils.fused_apply_rotary_pos_emb`, a
slot that Transformer Engine fills when it is installed. Where it is not, `install()` fills the
slot with `rotary`: the same arithmetic, in the same order (so results are bitwise those of the
unfused path), with cos/sin computed once per frequency table (megatron-core caches the table
itself) and the halves written straight into the output. Anything it does not cover (partial or
interleaved rotary) goes to megatron-core's unfused function unchanged.
"""

from __future__ import annotations

import weakref

import torch
from megatron.core.models.common.embeddings import rope_utils

# id(freqs) -> (weakref to freqs, {dtype: (cos half, sin half)}); the entry dies with the table
_TABLES: dict[int, tuple[weakref.ref, dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]]]] = {}


def _cos_sin(freqs: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cos and sin of the first half of `freqs` in `dtype`, or None when the two halves of the
    table differ (then it is not the rotate-half layout this function computes)."""
    key = id(freqs)
    entry = _TABLES.get(key)
    if entry is None or entry[0]() is not freqs:
        half = freqs.shape[-1] // 2
        with torch.no_grad():
            same = torch.equal(freqs[..., :half], freqs[..., half:])
        entry = (weakref.ref(freqs, lambda _ref, key=key: _TABLES.pop(key, None)), {})
        _TABLES[key] = entry
        if not same:
            entry[1][None] = None  # marks a table this function leaves to megatron-core
    per_dtype = entry[1]
    if None in per_dtype:
        return None
    if dtype not in per_dtype:
        half = freqs.shape[-1] // 2
        with torch.no_grad():
            first = freqs[..., :half]
            per_dtype[dtype] = (torch.cos(first).to(dtype), torch.sin(first).to(dtype))
    return per_dtype[dtype]


def _rotate(a1, a2, cos, sin, sign: float) -> torch.Tensor:
    """[a1·cos − sign·a2·sin, a2·cos + sign·a1·sin] along the last dim, written in place."""
    out = torch.empty(*a1.shape[:-1], 2 * a1.shape[-1], dtype=a1.dtype, device=a1.device)
    half = a1.shape[-1]
    first, second = out[..., :half], out[..., half:]
    torch.mul(a1, cos, out=first)
    torch.mul(a2, cos, out=second)
    if sign > 0:
        first.sub_(a2 * sin)
        second.add_(a1 * sin)
    else:
        first.add_(a2 * sin)
        second.sub_(a1 * sin)
    return out


class _Rotary(torch.autograd.Function):
    """y = t·cos + rotate_half(t)·sin; its gradient is the inverse rotation of dy."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        half = t.shape[-1] // 2
        return _rotate(t[..., :half], t[..., half:], cos, sin, 1.0)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        cos, sin = ctx.saved_tensors
        half = dy.shape[-1] // 2
        return _rotate(dy[..., :half], dy[..., half:], cos, sin, -1.0), None, None


def rotary(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False, **kwargs):
    """megatron-core's `fused_apply_rotary_pos_emb` contract: t [s, b, h, d], freqs [s, 1, 1, d]
    (fp32), rotate-half layout; returns the rotated t in t's dtype."""
    whole = freqs.shape[-1] == t.shape[-1] and t.shape[-1] % 2 == 0
    if torch.compiler.is_compiling():  # Inductor fuses the plain formula itself
        whole = False
    tables = None if interleaved or kwargs or not whole else _cos_sin(freqs, t.dtype)
    if tables is None:
        return rope_utils._apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved)
    return _Rotary.apply(t, *tables)


def install() -> bool:
    """Put `rotary` in megatron-core's fused-rotary slot unless Transformer Engine filled it;
    True when the slot holds a function (so `apply_rope_fusion` may be set)."""
    if rope_utils.fused_apply_rotary_pos_emb is None:
        rope_utils.fused_apply_rotary_pos_emb = rotary
    return rope_utils.fused_apply_rotary_pos_emb is not None
