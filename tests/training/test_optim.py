"""AdamW's parameter groups: which parameters weight decay reaches, per config policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, train_small

from megadyt.config import load_config
from megadyt.model import build_model
from megadyt.parallel.distributed import seed_everything
from megadyt.training.checkpoint.weights import load_tp1_weights
from megadyt.training.optim import parameter_groups


def _groups(tp1, norm: str, *overrides: str) -> tuple[set[str], set[str]]:
    """(decayed names, undecayed names) of the tiny model's AdamW groups."""
    cfg = load_config(TINY, [f"model.norm={norm}", *overrides])
    seed_everything(0)
    model = build_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = parameter_groups(model, cfg.train)
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert sum(len(v) for v in by_decay.values()) == len(names)  # every parameter, once
    return by_decay.get(cfg.train.weight_decay, set()), by_decay.get(0.0, set())


@pytest.mark.parametrize("norm", ["dyt", "derf"])
def test_undecayed_norm_scalars_are_alpha_and_shift_only(tp1_distributed, norm):
    decayed, undecayed = _groups(
        tp1_distributed, norm, "train.decay_norm_params=true", "train.decay_norm_scalars=false"
    )
    scalars = {"alpha", "shift"} if norm == "derf" else {"alpha"}
    assert undecayed and {n.rsplit(".", 1)[1] for n in undecayed} == scalars
    assert len(undecayed) == len(scalars) * (2 * 4 + 1)  # every norm slot of the 4 layers
    assert any(n.endswith(".weight") and "layernorm" in n for n in decayed)  # γ still decays
    assert any(n.endswith("embedding_scale") for n in decayed)


def test_by_default_only_the_weight_matrices_decay(tp1_distributed):
    decayed, undecayed = _groups(tp1_distributed, "dyt")
    assert _groups(tp1_distributed, "dyt", "train.decay_norm_params=false") == (decayed, undecayed)
    assert any(n.endswith("embedding_scale") for n in undecayed)
    assert {n.rsplit(".", 1)[1] for n in undecayed} == {"alpha", "weight", "embedding_scale"}
    assert all("layernorm" not in n and "final_norm" not in n for n in decayed)
    assert decayed and all(n.endswith("weight") for n in decayed)  # the matrices still decay


def test_decay_norm_params_on_decays_every_parameter(tp1_distributed):
    """megadyt's default before 2026-12-07: weight decay 0.1 on every parameter."""
    decayed, undecayed = _groups(tp1_distributed, "dyt", "train.decay_norm_params=true")
    assert not undecayed and any(n.endswith("embedding_scale") for n in decayed)


def test_rmsnorm_has_no_norm_scalars_to_leave(tp1_distributed):
    decay = "train.decay_norm_params=true"
    on = _groups(tp1_distributed, "rmsnorm", decay, "train.decay_norm_scalars=true")
    off = _groups(tp1_distributed, "rmsnorm", decay, "train.decay_norm_scalars=false")
    assert on == off and not on[1]  # the RMSNorm twin's optimizer does not change


def test_norm_scalar_lr_scale_groups_alpha_and_shift_alone(tp1_distributed):
    cfg = load_config(TINY, ["model.norm=derf", "train.norm_scalar_lr_scale=0.25"])
    seed_everything(0)
    model = build_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = parameter_groups(model, cfg.train)
    scaled = [g for g in groups if "lr_scale" in g]
    assert [g["lr_scale"] for g in scaled] == [0.25]  # α and s decay, so one group
    scalars = {names[id(p)].rsplit(".", 1)[1] for p in scaled[0]["params"]}
    assert scalars == {"alpha", "shift"} and len(scaled[0]["params"]) == 2 * (2 * 4 + 1)


def _first_step(run_dir: Path, zero: int, scale: float, decay: bool) -> dict[str, torch.Tensor]:
    """The norm parameters after one optimizer step (no warmup) of the small DyT model."""
    train_small(
        [
            f"run.dir={run_dir}",
            "train.steps=1",
            "train.save_interval=1",
            f"parallel.zero_stage={zero}",
            f"train.norm_scalar_lr_scale={scale}",
            f"train.decay_norm_params={str(decay).lower()}",
        ]
    )
    _, weights = load_tp1_weights(run_dir)
    return {k: weights[k].float() for k in weights if "norm" in k and "extra_state" not in k}


@pytest.mark.parametrize(("zero", "decay"), [(0, True), (3, False)])
def test_alpha_moves_by_the_scaled_lr_and_gamma_by_the_lr(tmp_path, zero, decay):
    """AdamW's first update is lr·g/|g| after decay, whatever the gradient's size: so after one
    step α moves by lr·scale·(1 ± wd·α) and γ (init 1) by lr, under DeepSpeed's own groups;
    with the norms spared decay (the default), wd is 0 for both."""
    lr, scale = 3e-3, 0.25
    wd = 0.1 if decay else 0.0
    frozen = _first_step(tmp_path / "frozen", zero, 0.0, decay)
    calibrated = json.loads((tmp_path / "frozen" / "calibration.json").read_text())["norms"]
    alphas = {k: v for k, v in frozen.items() if k.endswith("alpha")}
    assert len(alphas) == len(calibrated) == 2 * 2 + 1
    assert sorted(float(v) for v in alphas.values()) == sorted(
        float(torch.tensor(n["alpha"])) for n in calibrated
    )  # scale 0: α is exactly its calibrated value
    moved = _first_step(tmp_path / "scaled", zero, scale, decay)
    for name, before in alphas.items():
        step = moved[name] - before * (1 - lr * scale * wd)
        assert abs(step.abs().item() - lr * scale) < 0.02 * lr * scale, name
    gammas = [k for k in moved if k.endswith("weight")]
    assert len(gammas) == len(alphas)
    for name in gammas:
        step = (moved[name] - (1 - lr * wd)).abs()
        assert torch.allclose(step, torch.full_like(step, lr), rtol=0.02), name
        assert torch.equal(moved[name], frozen[name]), name  # the scale touches α alone
