"""AdamW's parameter groups: which parameters weight decay reaches, per config policy."""

from __future__ import annotations

import pytest
from helpers import TINY

from megadyt.config import load_config
from megadyt.model import build_model
from megadyt.parallel.distributed import seed_everything
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
    decayed, undecayed = _groups(tp1_distributed, norm, "train.decay_norm_scalars=false")
    scalars = {"alpha", "shift"} if norm == "derf" else {"alpha"}
    assert undecayed and {n.rsplit(".", 1)[1] for n in undecayed} == scalars
    assert len(undecayed) == len(scalars) * (2 * 4 + 1)  # every norm slot of the 4 layers
    assert any(n.endswith(".weight") and "layernorm" in n for n in decayed)  # γ still decays
    assert any(n.endswith("embedding_scale") for n in decayed)


def test_decay_norm_params_off_leaves_every_norm_parameter_and_the_scalar(tp1_distributed):
    decayed, undecayed = _groups(tp1_distributed, "dyt", "train.decay_norm_params=false")
    assert any(n.endswith("embedding_scale") for n in undecayed)
    assert {n.rsplit(".", 1)[1] for n in undecayed} == {"alpha", "weight", "embedding_scale"}
    assert all("layernorm" not in n and "final_norm" not in n for n in decayed)


def test_rmsnorm_has_no_norm_scalars_to_leave(tp1_distributed):
    on = _groups(tp1_distributed, "rmsnorm", "train.decay_norm_scalars=true")
    off = _groups(tp1_distributed, "rmsnorm", "train.decay_norm_scalars=false")
    assert on == off and not on[1]  # the RMSNorm twin's optimizer does not change
