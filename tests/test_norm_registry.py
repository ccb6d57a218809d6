"""The norm registry: every entry agrees with the module it builds, and every place that takes a
norm name refuses an unknown one with a MegadytError instead of running some other norm."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import pytest
import torch
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.cli.main import main
from megadyt.config import ModelConfig, load_config
from megadyt.errors import MegadytError
from megadyt.model import build_model, count_parameters, norm_modules, norm_scalars
from megadyt.model.llama import block_spec, norm_spec
from megadyt.norms import dispatch, fused_cpu, norm_entry
from megadyt.norms.registry import NORMS, entry_of, fused_kernels, has_embedding_scale
from megadyt.parallel.distributed import destroy_distributed, init_distributed, seed_everything

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny"
ROLES = ("attention", "ffn", "final")
UNKNOWN = "layernorm"


def transformer_config(hidden_size: int) -> TransformerConfig:
    return TransformerConfig(
        num_layers=1, hidden_size=hidden_size, num_attention_heads=1, use_cpu_initialization=True
    )


def assert_unknown(exc: pytest.ExceptionInfo) -> None:
    """The message is one line, names the unknown norm and lists the known ones."""
    message = str(exc.value)
    assert "\n" not in message and UNKNOWN in message, message
    assert all(name in message for name in NORMS), message


# ------------------------------------------------------------------------- entries vs modules


def test_registry_holds_the_three_norms():
    assert list(NORMS) == ["rmsnorm", "dyt", "derf"]
    assert [NORMS[n].squashing for n in NORMS] == [False, True, True]
    assert NORMS["rmsnorm"].fused is None and NORMS["rmsnorm"].saturation is None
    assert NORMS["derf"].fused.shift and NORMS["derf"].fused.triton_erf
    assert not NORMS["dyt"].fused.shift and not NORMS["dyt"].fused.triton_erf


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("name", list(NORMS))
def test_entry_builds_its_module_with_the_counted_parameters(name, bias):
    entry = norm_entry(name)
    model = ModelConfig(norm=name, hidden_size=24, norm_bias=bias, norm_impl="reference")
    for role in ROLES:
        spec = norm_spec(model, role)
        assert spec.module is entry.cls
        module = build_module(spec, config=transformer_config(24), hidden_size=24, eps=1e-5)
        assert type(module) is entry.cls and entry_of(module) is entry
        assert module.role == role
        assert sum(p.numel() for p in module.parameters()) == entry.params_per_norm(model)
        # the logged scalars are exactly the module's one-element parameters
        scalars = {n for n, p in module.named_parameters() if p.numel() == 1}
        assert scalars == set(entry.scalars)
        assert module.squashing == entry.squashing == hasattr(module, "alpha")
    if entry.squashing:
        assert module.impl == "reference"
        assert (module.bias is not None) == bias


@pytest.mark.parametrize("name", [n for n in NORMS if NORMS[n].squashing])
def test_saturation_statistic_matches_its_definition(name):
    """The entry's statistic is what the module's saturation_sums reports, and is the count of
    |αx+s| > 2 and the sum of f′ computed here from the formula."""
    entry = norm_entry(name)
    model = ModelConfig(norm=name, hidden_size=16, alpha0_attention=0.75, derf_shift_init=0.25)
    module = build_module(
        norm_spec(model, "attention"), config=transformer_config(16), hidden_size=16
    )
    x = torch.linspace(-6, 6, 64).reshape(4, 16).double()  # float32-exact α, s and x
    u = 0.75 * x.float().double() + (0.25 if name == "derf" else 0.0)
    f = torch.erf if name == "derf" else torch.tanh
    slope = torch.func.vmap(torch.func.grad(f))(u.reshape(-1)).sum()
    saturated, derivative = entry.saturation(u)
    assert saturated.item() == (u.abs() > 2).sum().item() > 0
    torch.testing.assert_close(derivative, slope)
    sums = module.saturation_sums(x.float())  # float32, as in training
    assert sums.tolist()[0] == 64 and sums[2].item() == saturated.item()
    torch.testing.assert_close(sums[3], slope, rtol=1e-6, atol=1e-6)


def test_has_embedding_scale_follows_squashing():
    for name, entry in NORMS.items():
        assert has_embedding_scale(ModelConfig(norm=name)) == entry.squashing
        assert has_embedding_scale(ModelConfig(norm=name, embedding_scale="on"))
        assert not has_embedding_scale(ModelConfig(norm=name, embedding_scale="off"))


def test_counts_read_the_entry(monkeypatch):
    """count_parameters takes its per-norm term from the registry, not its own formula."""
    model = ModelConfig(norm="dyt")
    before = count_parameters(model).norm
    changed = dataclasses.replace(NORMS["dyt"], params_per_norm=lambda m: 1000)
    monkeypatch.setitem(NORMS, "dyt", changed)
    assert count_parameters(model).norm == (2 * model.num_layers + 1) * 1000 + 1 != before


# ---------------------------------------------------------------------- unknown names refused


def test_norm_entry_refuses_unknown_name():
    with pytest.raises(MegadytError) as exc:
        norm_entry(UNKNOWN)
    assert_unknown(exc)


def test_model_code_refuses_unknown_name():
    """A ModelConfig built around validation (e.g. from an old checkpoint's dict)."""
    model = ModelConfig(norm=UNKNOWN)
    for call in (
        lambda: norm_spec(model, "attention"),
        lambda: block_spec(model),
        lambda: count_parameters(model),
        lambda: has_embedding_scale(model),
    ):
        with pytest.raises(MegadytError) as exc:
            call()
        assert_unknown(exc)


def _fused_args(n: int = 8):
    x = torch.randn(4, n)
    return x, torch.tensor([0.5]), torch.tensor([0.1]), torch.ones(n), None


@pytest.mark.parametrize("impl", ["compiled", "triton"])
def test_fused_dispatch_refuses_unknown_name_and_rmsnorm(impl):
    """run_fused must never run another norm's kernel for a name it does not know."""
    if impl == "triton" and dispatch.triton_backend() is None:
        pytest.skip(f"triton does not import: {dispatch.triton_error()}")
    x, alpha, shift, weight, bias = _fused_args()
    with pytest.raises(MegadytError) as exc:
        dispatch.run_fused(impl, UNKNOWN, x.requires_grad_(), alpha, shift, weight, bias)
    assert_unknown(exc)
    with pytest.raises(MegadytError, match="'rmsnorm' has no fused kernels"):
        dispatch.run_fused(impl, "rmsnorm", x.detach(), alpha, shift, weight, bias)
    with pytest.raises(MegadytError, match="'rmsnorm' has no fused kernels"):
        fused_kernels("rmsnorm")


def test_fused_cpu_backend_refuses_unknown_name():
    x, alpha, shift, weight, bias = _fused_args()
    with pytest.raises(MegadytError) as exc:
        fused_cpu.forward(UNKNOWN, x, alpha, shift, weight, bias)
    assert_unknown(exc)
    with pytest.raises(MegadytError) as exc:
        fused_cpu.backward(UNKNOWN, torch.ones_like(x), x, alpha, shift, weight)
    assert_unknown(exc)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_fused_triton_backend_refuses_unknown_name():
    """The name is looked up before any kernel launch, so this needs no GPU."""
    backend = dispatch.triton_backend()
    if backend is None:
        pytest.skip(f"triton does not import: {dispatch.triton_error()}")
    x, alpha, shift, weight, bias = _fused_args()
    for call in (
        lambda: backend.forward(UNKNOWN, x, alpha, shift, weight, bias),
        lambda: backend.backward(UNKNOWN, torch.ones_like(x), x, alpha, shift, weight),
    ):
        with pytest.raises(MegadytError) as exc:
            call()
        assert_unknown(exc)


def test_config_refuses_unknown_norm(capsys):
    with pytest.raises(MegadytError) as exc:
        load_config(TINY / "dyt.yaml", [f"model.norm={UNKNOWN}"])
    assert_unknown(exc)
    assert "'model.norm'" in str(exc.value)
    assert main(["info", "--config", str(TINY / "dyt.yaml"), "--set", f"model.norm={UNKNOWN}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and UNKNOWN in err and "model.norm" in err


# ---------------------------------------------------------------------------- norm_scalars


@pytest.fixture(scope="module")
def distributed():
    init_distributed(tp=1)
    yield
    destroy_distributed()


@pytest.mark.parametrize(
    "name,overrides",
    [("dyt", ()), ("derf", ()), ("rmsnorm", ()), ("rmsnorm", ("model.embedding_scale=on",))],
)
def test_norm_scalars(distributed, name, overrides):
    cfg = load_config(TINY / f"{name}.yaml", list(overrides))
    seed_everything(1)
    model = build_model(cfg)
    norms = norm_modules(model)
    assert len(norms) == 2 * cfg.model.num_layers + 1
    # change every scalar so the values are read from the model, not from defaults
    with torch.no_grad():
        for i, (_, module) in enumerate(norms):
            for scalar, offset in (("alpha", 0.0), ("shift", 0.5)):
                if hasattr(module, scalar):
                    getattr(module, scalar).fill_(0.25 * (i + 1) + offset)
    scalars = norm_scalars(model)

    want = {}
    kinds = {"dyt": ("alpha",), "derf": ("alpha", "shift")}.get(name, ())
    for i, (norm, _) in enumerate(norms):
        want.update({f"norm/alpha/{norm}": 0.25 * (i + 1)} if "alpha" in kinds else {})
        want.update({f"norm/shift/{norm}": 0.25 * (i + 1) + 0.5} if "shift" in kinds else {})
    if has_embedding_scale(cfg.model):
        want["model/embedding_scale"] = pytest.approx(math.sqrt(cfg.model.hidden_size))
    assert scalars == want
    assert ("model/embedding_scale" in scalars) == (name != "rmsnorm" or bool(overrides))
    assert "norm/alpha/final" in scalars or name == "rmsnorm"
