"""DyT, Derf and RMSNorm (functional forms and megatron-core modules) against their formulas.

The reference formulas are written here, independently of megadyt.norms:
    DyT(x)     = weight * tanh(alpha * x) (+ bias)
    Derf(x)    = weight * erf(alpha * x + shift) (+ bias)
    RMSNorm(x) = x / sqrt(mean(x^2) + eps) * weight
"""

from __future__ import annotations

import math

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.norms import Derf, DyT, RMSNorm, derf, dyt, rms_norm

H = 16


# ---------------------------------------------------------------- independent reference formulas


def ref_dyt(x, alpha, weight, bias=None):
    y = weight * torch.tanh(alpha * x)
    return y if bias is None else y + bias


def ref_derf(x, alpha, shift, weight, bias=None):
    y = weight * torch.erf(alpha * x + shift)
    return y if bias is None else y + bias


def ref_rms(x, weight, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def make_config(**kwargs) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1,
        hidden_size=H,
        num_attention_heads=kwargs.pop("num_attention_heads", 1),
        use_cpu_initialization=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def config() -> TransformerConfig:
    return make_config()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen(seed), dtype=torch.float64) * scale).to(dtype)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def make_params(kind: str, with_bias: bool, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Non-trivial parameter values (not the init) so every term of the formula matters."""
    params = {
        "alpha": torch.tensor([0.73], dtype=dtype),
        "weight": randn(H, seed=11, dtype=dtype) * 0.5 + 1.0,
    }
    if kind == "derf":
        params["shift"] = torch.tensor([0.21], dtype=dtype)
    if with_bias:
        params["bias"] = randn(H, seed=12, dtype=dtype) * 0.1
    return params


def call_functional(kind, x, p):
    if kind == "dyt":
        return dyt(x, p["alpha"], p["weight"], p.get("bias"))
    return derf(x, p["alpha"], p["shift"], p["weight"], p.get("bias"))


def call_reference(kind, x, p):
    if kind == "dyt":
        return ref_dyt(x, p["alpha"], p["weight"], p.get("bias"))
    return ref_derf(x, p["alpha"], p["shift"], p["weight"], p.get("bias"))


def make_module(kind: str, config, with_bias: bool, p: dict[str, torch.Tensor]):
    """A module with its parameters set to `p`."""
    if kind == "dyt":
        module = DyT(config, H, alpha0=0.5, bias=with_bias)
    elif kind == "derf":
        module = Derf(config, H, alpha0=0.5, shift0=0.0, bias=with_bias)
    else:
        module = RMSNorm(config, H, eps=1e-5)
    with torch.no_grad():
        for name, value in p.items():
            getattr(module, name).copy_(value)
    return module


KINDS = ["dyt", "derf"]
BIAS = [False, True]


# ------------------------------------------------------------------ functional forms, fp32


@pytest.mark.parametrize("with_bias", BIAS)
@pytest.mark.parametrize("kind", KINDS)
def test_functional_forward_backward_fp32(kind, with_bias):
    p = make_params(kind, with_bias)
    x = randn(3, 5, H, seed=1, scale=2.0)
    upstream = randn(3, 5, H, seed=2)

    ours_p = {k: leaf(v) for k, v in p.items()}
    ours_x = leaf(x)
    y = call_functional(kind, ours_x, ours_p)
    (y * upstream).sum().backward()

    ref_p = {k: leaf(v) for k, v in p.items()}
    ref_x = leaf(x)
    y_ref = call_reference(kind, ref_x, ref_p)
    (y_ref * upstream).sum().backward()

    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_x.grad, ref_x.grad, rtol=1e-6, atol=1e-6)
    for name in p:
        torch.testing.assert_close(ours_p[name].grad, ref_p[name].grad, rtol=1e-5, atol=1e-5)


def test_functional_bias_none_differs_from_bias():
    """The bias argument is actually added (guards against a silently dropped β)."""
    p = make_params("dyt", with_bias=True)
    x = randn(4, H, seed=3)
    with_b = dyt(x, p["alpha"], p["weight"], p["bias"])
    without = dyt(x, p["alpha"], p["weight"])
    torch.testing.assert_close(with_b - without, p["bias"].expand_as(x), rtol=1e-6, atol=1e-6)


def test_dyt_analytic_derivatives():
    """dy/dx = w·α·(1-tanh²(αx)), dy/dα = Σ g·w·x·(1-tanh²), dy/dw = Σ g·tanh, dy/dβ = Σ g."""
    p = {k: leaf(v.double()) for k, v in make_params("dyt", with_bias=True).items()}
    x = leaf(randn(7, H, seed=4, scale=1.5, dtype=torch.float64))
    g = randn(7, H, seed=5, dtype=torch.float64)
    (dyt(x, p["alpha"], p["weight"], p["bias"]) * g).sum().backward()

    a, w = p["alpha"].detach(), p["weight"].detach()
    xd = x.detach()
    t = torch.tanh(a * xd)
    sech2 = 1.0 - t * t
    torch.testing.assert_close(x.grad, g * w * a * sech2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p["alpha"].grad, (g * w * xd * sech2).sum().reshape(1))
    torch.testing.assert_close(p["weight"].grad, (g * t).sum(0))
    torch.testing.assert_close(p["bias"].grad, g.sum(0))


def test_derf_analytic_derivatives():
    """erf'(z) = 2/√π·exp(-z²), z = αx + s."""
    p = {k: leaf(v.double()) for k, v in make_params("derf", with_bias=True).items()}
    x = leaf(randn(7, H, seed=6, scale=1.5, dtype=torch.float64))
    g = randn(7, H, seed=7, dtype=torch.float64)
    (derf(x, p["alpha"], p["shift"], p["weight"], p["bias"]) * g).sum().backward()

    a, s, w = p["alpha"].detach(), p["shift"].detach(), p["weight"].detach()
    xd = x.detach()
    z = a * xd + s
    derf_dz = 2.0 / math.sqrt(math.pi) * torch.exp(-z * z)
    torch.testing.assert_close(x.grad, g * w * a * derf_dz, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p["alpha"].grad, (g * w * xd * derf_dz).sum().reshape(1))
    torch.testing.assert_close(p["shift"].grad, (g * w * derf_dz).sum().reshape(1))
    torch.testing.assert_close(p["weight"].grad, (g * torch.erf(z)).sum(0))
    torch.testing.assert_close(p["bias"].grad, g.sum(0))


# ------------------------------------------------------------------ functional forms, bf16


def naive_bf16(kind, x, p):
    """The same formula evaluated op by op in bf16 -- what the implementation must NOT do."""
    pb = {k: v.to(torch.bfloat16) for k, v in p.items()}
    return call_reference(kind, x, pb)


@pytest.mark.parametrize("with_bias", BIAS)
@pytest.mark.parametrize("kind", KINDS)
def test_functional_bf16_is_fp32_rounded(kind, with_bias):
    p = make_params(kind, with_bias)  # fp32 parameters, as in the model (params_dtype fp32)
    x = randn(64, H, seed=8, scale=2.0, dtype=torch.bfloat16)

    y = call_functional(kind, x, p)
    expected = call_reference(kind, x.float(), p).to(torch.bfloat16)

    assert y.dtype == torch.bfloat16
    assert torch.equal(y, expected)
    # The check above must be able to tell fp32 from bf16 internals: on these inputs the
    # op-by-op bf16 evaluation rounds differently in many places.
    naive = naive_bf16(kind, x, p)
    assert (naive != expected).sum() > 10


@pytest.mark.parametrize("kind", KINDS)
def test_functional_bf16_backward(kind):
    p = make_params(kind, with_bias=True)
    x = randn(32, H, seed=9, scale=2.0, dtype=torch.bfloat16)
    g = randn(32, H, seed=10, dtype=torch.bfloat16)

    ours_p = {k: leaf(v) for k, v in p.items()}
    ours_x = leaf(x)
    (call_functional(kind, ours_x, ours_p).float() * g.float()).sum().backward()

    ref_p = {k: leaf(v) for k, v in p.items()}
    ref_x = leaf(x.float())
    (call_reference(kind, ref_x, ref_p).to(torch.bfloat16).float() * g.float()).sum().backward()

    assert ours_x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(
        ours_x.grad.float(), ref_x.grad.to(torch.bfloat16).float(), rtol=2**-7, atol=1e-6
    )
    for name in p:
        assert ours_p[name].grad.dtype == torch.float32
        torch.testing.assert_close(ours_p[name].grad, ref_p[name].grad, rtol=1e-4, atol=1e-5)


def test_rms_norm_functional_bf16_is_fp32_rounded():
    x = randn(64, H, seed=13, scale=3.0, dtype=torch.bfloat16)
    w = randn(H, seed=14) * 0.5 + 1.0
    y = rms_norm(x, w, 1e-5)
    assert y.dtype == torch.bfloat16
    expected = ref_rms(x.double(), w.double(), 1e-5).to(torch.bfloat16)
    torch.testing.assert_close(y.float(), expected.float(), rtol=2**-8, atol=0)


# ------------------------------------------------------------------ saturated inputs


def saturated(dtype):
    base = torch.tensor([-1e4, -3e3, -50.0, -5.0, -0.1, 0.0, 0.1, 5.0, 50.0, 3e3, 1e4] * 2)
    return base[:H].to(torch.float64).repeat(3, 1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_functional_saturated_inputs(kind, dtype):
    p = make_params(kind, with_bias=False)
    x = leaf(saturated(dtype))
    ps = {k: leaf(v) for k, v in p.items()}
    y = call_functional(kind, x, ps)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all()
    for name in ps:
        assert torch.isfinite(ps[name].grad).all(), name
    # |αx| ≥ 700 saturates: the output is ±weight there, and the x-gradient vanishes.
    big = x.detach().abs() >= 1e3
    sign = torch.sign(x.detach()).float()
    expected = (p["weight"] * sign).to(dtype)
    assert torch.equal(y.detach()[big], expected[big])
    assert (x.grad[big] == 0).all()
    # the saturated entries contribute nothing to dα beyond the unsaturated ones
    x_small = leaf(torch.where(big, torch.zeros_like(x.detach()), x.detach()))
    ps2 = {k: leaf(v) for k, v in p.items()}
    call_functional(kind, x_small, ps2).sum().backward()
    torch.testing.assert_close(ps["alpha"].grad, ps2["alpha"].grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_module_saturated_inputs(config, dtype):
    module = RMSNorm(config, H, eps=1e-5)
    x = leaf(saturated(dtype))
    y = module(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(module.weight.grad).all()
    expected = ref_rms(x.detach().double(), torch.ones(H, dtype=torch.float64), 1e-5)
    torch.testing.assert_close(
        y.double(), expected, rtol=2**-7 if dtype != torch.float32 else 1e-6, atol=1e-6
    )


# ------------------------------------------------------------------ modules


@pytest.mark.parametrize("with_bias", BIAS)
@pytest.mark.parametrize("kind", KINDS)
def test_module_init_values(config, kind, with_bias):
    if kind == "dyt":
        module = DyT(config, H, alpha0=0.37, bias=with_bias)
        expected_names = {"alpha", "weight"}
    else:
        module = Derf(config, H, alpha0=0.37, shift0=-0.25, bias=with_bias)
        expected_names = {"alpha", "weight", "shift"}
        assert module.shift.shape == (1,) and module.shift.item() == -0.25
    if with_bias:
        expected_names.add("bias")
        assert torch.equal(module.bias, torch.zeros(H))
    assert {n for n, _ in module.named_parameters()} == expected_names
    assert module.alpha.shape == (1,)
    assert module.alpha.item() == pytest.approx(0.37)
    assert torch.equal(module.weight, torch.ones(H))
    for param in module.parameters():
        assert param.dtype == config.params_dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", BIAS)
@pytest.mark.parametrize("kind", KINDS)
def test_module_forward_backward(config, kind, with_bias, dtype):
    p = make_params(kind, with_bias)
    module = make_module(kind, config, with_bias, p)
    x = randn(4, 2, H, seed=15, scale=2.0, dtype=dtype)  # [s, b, h], megatron's layout
    g = randn(4, 2, H, seed=16)

    xm = leaf(x)
    y = module(xm)
    (y.float() * g).sum().backward()

    ref_p = {k: leaf(v) for k, v in p.items()}
    xr = leaf(x.float())
    y_ref = call_reference(kind, xr, ref_p)
    (y_ref.to(dtype).float() * g).sum().backward()

    assert y.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(xm.grad, xr.grad, rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(y, y_ref.to(dtype))
        torch.testing.assert_close(
            xm.grad.float(), xr.grad.to(dtype).float(), rtol=2**-7, atol=1e-6
        )
    for name in p:
        torch.testing.assert_close(
            getattr(module, name).grad, ref_p[name].grad, rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_module_forward_backward(config, dtype):
    w = randn(H, seed=17) * 0.5 + 1.0
    module = make_module("rmsnorm", config, False, {"weight": w})
    assert module.eps == 1e-5
    x = randn(4, 2, H, seed=18, scale=3.0, dtype=dtype)
    g = randn(4, 2, H, seed=19, dtype=dtype).float()  # exact in dtype: the cast back is lossless

    xm = leaf(x)
    y = module(xm)
    (y.float() * g).sum().backward()

    wr = leaf(w.double())
    xr = leaf(x.double())
    y_ref = ref_rms(xr, wr, 1e-5)
    (y_ref * g.double()).sum().backward()

    assert y.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2**-7, "atol": 1e-2}
    torch.testing.assert_close(y.double(), y_ref, **tol)
    torch.testing.assert_close(xm.grad.double(), xr.grad, **tol)
    torch.testing.assert_close(module.weight.grad.double(), wr.grad, rtol=1e-3, atol=1e-3)


def test_rmsnorm_eps_is_used(config):
    """A large eps changes the output as the formula says (guards against a dropped eps)."""
    module = RMSNorm(config, H, eps=0.5)
    x = randn(3, H, seed=20, scale=0.3)
    torch.testing.assert_close(module(x), ref_rms(x, torch.ones(H), 0.5), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(module(x), ref_rms(x, torch.ones(H), 1e-5), rtol=1e-3, atol=1e-3)


def non_contiguous_views():
    strided = randn(5, 2 * H, seed=21, scale=2.0)[:, ::2]
    transposed = randn(H, 6, seed=22, scale=2.0).t()
    permuted = randn(H, 3, 4, seed=23, scale=2.0).permute(2, 1, 0)
    return {"strided": strided, "transposed": transposed, "permuted": permuted}


@pytest.mark.parametrize("view", ["strided", "transposed", "permuted"])
@pytest.mark.parametrize("kind", ["dyt", "derf", "rmsnorm"])
def test_module_non_contiguous_input(config, kind, view):
    x = non_contiguous_views()[view]
    assert not x.is_contiguous()
    p = {"weight": randn(H, seed=24) + 1.0}
    if kind != "rmsnorm":
        p.update({k: v for k, v in make_params(kind, with_bias=True).items() if k != "weight"})
    module = make_module(kind, config, kind != "rmsnorm", p)

    xa = x.detach().requires_grad_(True)  # the view itself, strides kept
    xb = leaf(x.contiguous())
    assert not xa.is_contiguous() and xb.is_contiguous()
    g = randn(*x.shape, seed=25)
    # DyT/Derf are elementwise: bit-identical. RMSNorm reduces over h; the reduction order may
    # follow the memory layout, so allow one fp32 ulp there.
    tol = {"rtol": 0, "atol": 0} if kind != "rmsnorm" else {"rtol": 1e-6, "atol": 1e-6}
    ya, yb = module(xa), module(xb)
    torch.testing.assert_close(ya, yb, **tol)
    (ya * g).sum().backward()
    grads_a = {n: q.grad.clone() for n, q in module.named_parameters()}
    module.zero_grad()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    for name, q in module.named_parameters():
        torch.testing.assert_close(grads_a[name], q.grad, rtol=1e-6, atol=1e-6)
    # and against the formula
    if kind == "rmsnorm":
        expected = ref_rms(x, p["weight"], 1e-5)
    else:
        expected = call_reference(kind, x, p)
    torch.testing.assert_close(ya, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_functional_non_contiguous_input(kind):
    p = make_params(kind, with_bias=True)
    for x in non_contiguous_views().values():
        torch.testing.assert_close(
            call_functional(kind, x, p), call_functional(kind, x.contiguous(), p), rtol=0, atol=0
        )


# ------------------------------------------------------------------ sequence-parallel marker


@pytest.mark.parametrize("sp", [False, True])
@pytest.mark.parametrize("kind", ["dyt", "derf", "rmsnorm"])
def test_parameters_carry_sequence_parallel(kind, sp):
    cfg = make_config(
        sequence_parallel=sp, tensor_model_parallel_size=2 if sp else 1, num_attention_heads=2
    )
    assert cfg.sequence_parallel is sp
    cls = {"dyt": DyT, "derf": Derf, "rmsnorm": RMSNorm}[kind]
    kwargs = {"bias": True} if kind != "rmsnorm" else {}
    module = cls(cfg, H, **kwargs)
    params = dict(module.named_parameters())
    assert params, "module has no parameters"
    for name, param in params.items():
        assert getattr(param, "sequence_parallel", None) is sp, name
