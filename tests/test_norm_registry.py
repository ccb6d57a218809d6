"""The norm registry: every entry agrees with the module it builds, every place that takes a
norm name refuses an unknown one with a MegadytError, and a new squashing norm needs nothing
but its module and its entry."""

from __future__ import annotations

import dataclasses
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
from megadyt.norms import SquashingFunction, SquashingNorm, dispatch, fused_cpu, norm_entry
from megadyt.norms.registry import NORMS, entry_of, has_embedding_scale, squashing_entry
from megadyt.parallel.distributed import seed_everything

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
    assert NORMS["rmsnorm"].function is None and not NORMS["rmsnorm"].has_shift
    assert NORMS["derf"].function.name == "erf" and NORMS["derf"].has_shift
    assert NORMS["dyt"].function.name == "tanh" and not NORMS["dyt"].has_shift


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
    saturated, derivative = entry.function.saturation(u)
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


def test_config_refuses_unknown_norm(capsys):
    with pytest.raises(MegadytError) as exc:
        load_config(TINY / "dyt.yaml", [f"model.norm={UNKNOWN}"])
    assert_unknown(exc)
    assert "'model.norm'" in str(exc.value)
    assert main(["info", "--config", str(TINY / "dyt.yaml"), "--set", f"model.norm={UNKNOWN}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and UNKNOWN in err and "model.norm" in err


# ---------------------------------------------------------------------------- norm_scalars


@pytest.mark.parametrize(
    "name,overrides",
    [("dyt", ()), ("derf", ()), ("rmsnorm", ()), ("rmsnorm", ("model.embedding_scale=on",))],
)
def test_norm_scalars(tp1_distributed, name, overrides):
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


# ------------------------------------------------------------- a new norm from the registry


class DynamicAtan(SquashingNorm):
    """A throwaway squashing norm, γ·atan(αx+s)+β: only its function and class, no kernel code."""

    function = SquashingFunction("atan", lambda z, f: 1.0 / (1.0 + z * z))
    has_shift = True


@pytest.fixture
def datan(monkeypatch):
    """The norm registered the way a real one is: one entry (and the config Literal, which
    ModelConfig built directly does not check)."""
    entry = squashing_entry("datan", DynamicAtan)
    monkeypatch.setitem(NORMS, "datan", entry)
    return entry


def test_a_new_squashing_norm_needs_only_its_entry(tp1_distributed, datan):
    """Spec, count, scalars, embedding scalar, the fused CPU path and its gradients, the
    saturation statistic and the Hugging Face modeling file all follow from the entry."""
    cfg = load_config(TINY / "dyt.yaml", ["model.norm_impl=compiled"])
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, norm="datan"))
    seed_everything(3)
    model = build_model(cfg)
    norms = norm_modules(model)
    assert all(type(m) is DynamicAtan and m.impl == "compiled" for _, m in norms)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg.model).total
    scalars = norm_scalars(model)
    assert {"norm/alpha/final", "norm/shift/final", "model/embedding_scale"} <= set(scalars)

    # the compiled path (bodies built from f and f') against the plain formula
    module = norms[0][1]
    with torch.no_grad():
        module.shift.fill_(0.2)
    x = torch.randn(64, 2, cfg.model.hidden_size, requires_grad=True)
    y = module(x)
    assert type(y.grad_fn).__name__ == "_FusedElementwiseNormBackward"
    y.square().sum().backward()
    fused_grads = [x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    for p in [x, *module.parameters()]:
        p.grad = None
    want = module.weight * torch.atan(module.alpha * x + module.shift)
    want.square().sum().backward()
    torch.testing.assert_close(y, want, rtol=2e-5, atol=2e-5)
    for got, ref in zip(fused_grads, [x.grad] + [p.grad for p in module.parameters()]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert any(key[0] is DynamicAtan.function for key in fused_cpu._compiled)

    # the monitor's statistic is f' of the pre-activation
    u = torch.linspace(-4, 4, 33)
    saturated, slope = datan.function.saturation(u)
    assert saturated.item() == (u.abs() > 2).sum().item()
    torch.testing.assert_close(slope, (1 / (1 + u.double() ** 2)).sum(), rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="no kernels for f = atan"):
        dispatch.resolve_impl(
            "triton", DynamicAtan.function, x, *[module.alpha] * 2, module.weight, None
        )


def test_a_new_norm_exports_to_hugging_face(datan):
    """The export's config names the torch function, and modeling_megadyt computes it."""
    from megadyt.interop.hf_config import hf_config_dict, is_plain_llama
    from megadyt.interop.modeling_megadyt import ElementwiseNorm

    model = ModelConfig(norm="datan", hidden_size=16)
    config = hf_config_dict(model, "float32", 1, 2)
    assert not is_plain_llama(model)
    assert (config["megadyt_function"], config["megadyt_norm_shift"]) == ("atan", True)
    norm = ElementwiseNorm(16, config["megadyt_function"], config["megadyt_norm_shift"], False)
    with torch.no_grad():
        norm.alpha.fill_(0.7), norm.shift.fill_(-0.1)
    x = torch.randn(3, 16)
    torch.testing.assert_close(norm(x), torch.atan(0.7 * x - 0.1))


def test_squashing_function_must_be_a_torch_function():
    with pytest.raises(ValueError, match="not a torch function"):
        SquashingFunction("no_such_function", lambda z, f: z)
