"""The squashing functions f and f′ as Triton functions, for the kernels in fused_triton.

A kernel at the HBM floor has ~30 instructions per bf16 element to spend in its forward, so f
is built for few instructions: tanh from one exp2 and one reciprocal, erf (16-bit storage) from
Abramowitz & Stegun's 7.1.26, both on the GPU's approximate SFU instructions. Where the storage
is fp32 (PRECISE) they stay exact to fp32 rounding. Imported only by fused_triton (it imports
triton at the top; see dispatch).
"""

from __future__ import annotations

import triton
import triton.language as tl

# jit code reads only constexpr globals
_TWO_OVER_SQRT_PI = tl.constexpr(1.1283791670955126)
_LOG2E = tl.constexpr(1.4426950408889634)
_TWO_LOG2E = tl.constexpr(2.8853900817779268)


@triton.jit
def _exp2(x, FAST: tl.constexpr):
    # FAST (compiled for a GPU): the bare SFU instruction. Triton's own exp2 and division keep
    # denormal results, which costs ~3 and ~8 more instructions an element; nothing here needs
    # a denormal. The interpreter runs no assembly: it takes the plain operations.
    if FAST:
        y = tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        y = tl.math.exp2(x)
    return y


@triton.jit
def _reciprocal(x, FAST: tl.constexpr):
    if FAST:
        y = tl.inline_asm_elementwise(
            "rcp.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        y = 1.0 / x
    return y


@triton.jit
def _tanh(z, PRECISE: tl.constexpr, FAST: tl.constexpr):
    # 1 − 2/(1 + 2^(2z·log2 e)): one exp2 and one reciprocal, exactly ±1 at ±inf. Absolute
    # error ~3e-7, under half an ulp of bf16/fp16 wherever |tanh| > 1e-4. With PRECISE (fp32
    # storage), where 1 − q cancels (|z| < 1/4) the odd Taylor series to z⁹ instead: ~1.6e-7
    # relative everywhere, as fused_cpu's tanh. (A constexpr multiplies from the right: the
    # interpreter rejects constexpr · tensor inside exp2.)
    t = 1.0 - 2.0 * _reciprocal(1.0 + _exp2(z * _TWO_LOG2E, FAST), FAST)
    if PRECISE:
        z2 = z * z
        c = -1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0 + z2 * (62.0 / 2835.0)))
        t = tl.where(z2 < 0.0625, z + z * z2 * c, t)
    return t


@triton.jit
def _tanh_derivative(z, f, FAST: tl.constexpr):
    return 1.0 - f * f


@triton.jit
def _erf(z, PRECISE: tl.constexpr, FAST: tl.constexpr):
    # fp32 storage: libdevice's erf (~25 instructions). 16-bit storage: Abramowitz & Stegun
    # 7.1.26, 1 − t·P(t)·e^(−z²) with t = 1/(1 + p|z|), absolute error ≤ 1.5e-7; e^(−z²) is
    # written as in the derivative, so the backward computes it once.
    if PRECISE:
        f = tl.math.erf(z)
    else:
        t = _reciprocal(1.0 + 0.3275911 * tl.abs(z), FAST)
        p = 1.061405429 * t - 1.453152027
        p = (((p * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
        f = 1.0 - p * _exp2(-(z * z) * _LOG2E, FAST)
        f = tl.where(z < 0.0, -f, f)
    return f


@triton.jit
def _erf_derivative(z, f, FAST: tl.constexpr):
    return _exp2(-(z * z) * _LOG2E, FAST) * _TWO_OVER_SQRT_PI


# SquashingFunction.name -> (f(z, PRECISE, FAST), f′(z, f, FAST)) as Triton functions. PRECISE
# is true for fp32 storage, where f must be exact to fp32 rounding, false for 16-bit storage;
# FAST is true when compiled for a GPU (see _exp2). A squashing function without an entry runs
# the compiled path on CUDA (inductor generates its Triton code); see dispatch.
TRITON_FUNCTIONS = {"tanh": (_tanh, _tanh_derivative), "erf": (_erf, _erf_derivative)}
