"""α calibration (model.alpha_init=calibrate): α = c / std(input), set in forward order, the same
on every parallel layout, stored with the run, and never redone on a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import SMALL_TRAINING, small_config, train_small
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.errors import MegadytError
from megadyt.model.counting import count_parameters
from megadyt.norms import Derf, DyT
from megadyt.norms.calibration import MATCH_CONSTANTS, calibrate_alpha, match_alpha
from megadyt.parallel.testing import run_distributed
from megadyt.training.calibrate import calibration_constants

H = 16


def _config() -> TransformerConfig:
    return TransformerConfig(
        num_layers=1, hidden_size=H, num_attention_heads=1, use_cpu_initialization=True
    )


def _std(x: torch.Tensor) -> float:
    x = x.double()
    return float(((x - x.mean()) ** 2).mean().sqrt())


def _round3(value: float) -> float:
    return float(f"{value:.3g}")


def test_matched_alpha_is_the_constant_closest_to_the_rmsnorm_it_replaces():
    """Conversion from RMSNorm: each norm gets the c (of MATCH_CONSTANTS) whose γ·tanh(c/std·x)
    is nearest to γ·x/rms(x) in squared error, computed here independently; the second norm
    is matched downstream of the first, already matched one."""
    cfg = _config()
    first, second = DyT(cfg, H, role="attention"), Derf(cfg, H, role="final")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        first.weight.copy_(torch.rand(H, generator=g) + 0.5)
        second.weight.copy_(torch.rand(H, generator=g) + 0.5)
    # tokens of very different scales: no single α fits them all, so the choice matters
    x = torch.randn(4, 6, H, generator=g) * torch.logspace(-1, 1, 6)[None, :, None]

    records = match_alpha([("a", first), ("b", second)], lambda: second(3.0 * first(x)), 1e-5)

    def best(module, inputs, fn):
        std = _std(inputs)
        target = torch.nn.functional.rms_norm(inputs, (H,), module.weight.detach(), 1e-5)
        errors = [float(((module.weight.detach() * fn(_round3(c / std) * inputs) - target) ** 2)
                        .sum()) for c in MATCH_CONSTANTS]  # fmt: skip
        return MATCH_CONSTANTS[errors.index(min(errors))], std

    c_first, std_first = best(first, x, torch.tanh)
    downstream = 3.0 * first.weight.detach() * torch.tanh(_round3(c_first / std_first) * x)
    c_second, _ = best(second, downstream, torch.erf)
    assert [r.constant for r in records] == [c_first, c_second]
    assert float(first.alpha.detach()) == pytest.approx(_round3(c_first / std_first), rel=1e-6)
    assert len(set(MATCH_CONSTANTS)) == len(MATCH_CONSTANTS) and c_first != c_second


def test_alpha_is_c_over_input_std_in_forward_order():
    cfg = _config()
    first = DyT(cfg, H, alpha0=8.0, role="attention")
    second = Derf(cfg, H, alpha0=8.0, shift0=0.25, role="ffn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, H, generator=g) * 0.37 + 0.1

    def forward():
        return second(5.0 * first(x))

    records = calibrate_alpha(
        [("a", first), ("b", second)], forward, {"attention": 2.0, "ffn": 0.5}.get
    )
    alpha_first = _round3(2.0 / _std(x))
    # the second norm is measured downstream of the *calibrated* first one
    alpha_second = _round3(0.5 / _std(5.0 * torch.tanh(alpha_first * x)))
    assert float(first.alpha.detach()) == pytest.approx(alpha_first, rel=1e-6)
    assert float(second.alpha) == pytest.approx(alpha_second, rel=1e-6)
    assert alpha_second != pytest.approx(_round3(0.5 / _std(5.0 * torch.tanh(8.0 * x))))
    assert float(second.shift) == 0.25  # Derf keeps its initial shift
    assert [(r.name, r.role, r.constant, r.alpha) for r in records] == [
        ("a", "attention", 2.0, pytest.approx(alpha_first)),
        ("b", "ffn", 0.5, pytest.approx(alpha_second)),
    ]
    assert records[0].input_std == pytest.approx(_std(x), rel=1e-9)


def test_constant_input_cannot_be_calibrated():
    norm = DyT(_config(), H, alpha0=1.0)
    with pytest.raises(MegadytError, match="alpha_init=rule"):
        calibrate_alpha([("n", norm)], lambda: norm(torch.ones(2, H)), lambda role: 1.0)


# ------------------------------------------------------------- layouts and resume, real trainer

# the small training config (2 layers, width 64, GQA) with calibration and no evaluation
SMALL = [*SMALL_TRAINING, "model.alpha_init=calibrate", "train.eval_interval=100"]


def _layouts(rank: int, world_size: int, layouts: list[list[str]]) -> None:
    for overrides in layouts:
        train_small(overrides, SMALL)


def _alphas(run_dir: Path) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """(calibration.json's α per norm, the α the engine held at step 0 per the metrics)."""
    calibration = json.loads((run_dir / "calibration.json").read_text())
    step0 = [
        r
        for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
        if r["step"] == 0
    ]
    assert len(step0) == 1, run_dir
    logged = {k.removeprefix("norm/alpha/"): v for k, v in step0[0].items() if "/alpha/" in k}
    return [(n["name"], n["alpha"]) for n in calibration["norms"]], logged


@pytest.mark.multiprocess
@pytest.mark.parametrize("norm", ["dyt", "derf"])
def test_every_layout_calibrates_to_identical_alpha(tmp_path, norm):
    common = [f"model.norm={norm}", "train.steps=1", "train.save_interval=100"]
    run_distributed(
        _layouts,
        world_size=1,
        layouts=[
            [*common, f"run.dir={tmp_path}/tp1", "parallel.zero_stage=0"],
            [*common, f"run.dir={tmp_path}/final", "model.alpha_calibration_final=0.25"],
            # planned long enough for the run-length rule's long-run constants; stops at once
            [*common, f"run.dir={tmp_path}/long", *_planned_steps(2.0), "train.stop_at_step=1"],
        ],
    )
    run_distributed(
        _layouts,
        world_size=2,
        layouts=[
            [*common, f"run.dir={tmp_path}/dp2z1", "parallel.zero_stage=1"],
            [*common, f"run.dir={tmp_path}/dp2z3", "parallel.zero_stage=3"],
            [*common, f"run.dir={tmp_path}/tp2sp", "parallel.tp=2", "parallel.sp=true"],
        ],
    )
    reference, logged = _alphas(tmp_path / "tp1")
    names = [name for name, _ in reference]
    assert names == ["layer0.attention", "layer0.ffn", "layer1.attention", "layer1.ffn", "final"]
    # calibrated, not the width rule's α₀ (16 at width 64); attention gets about twice the others
    assert all(0.1 < a < 10 for _, a in reference)
    assert reference[0][1] > 1.5 * reference[1][1]
    for layout in ("dp2z1", "dp2z3", "tp2sp"):
        alphas, engine_alphas = _alphas(tmp_path / layout)
        assert alphas == reference, layout  # bit-identical
        # what the engine trained with (ZeRO-3 partitions after calibration) is that α
        assert engine_alphas == pytest.approx(dict(alphas), rel=1e-7), layout
    # the final norm's own constant: it comes last, so only its α changes, by 0.25 / 1
    final, _ = _alphas(tmp_path / "final")
    assert final[:-1] == reference[:-1]
    assert final[-1][1] == pytest.approx(0.25 * reference[-1][1], rel=1e-6)
    # a run planned long: every α is c / std of its input with the long-run constants
    recorded = json.loads((tmp_path / "long" / "calibration.json").read_text())
    for record in recorded["norms"]:
        c = 1.0 if record["name"].endswith("attention") else 0.5
        assert record["alpha"] == pytest.approx(c / record["input_std"], rel=5e-3), record
    assert recorded["alpha_calibration_attention"] == 1.0
    assert recorded["alpha_calibration_other"] == recorded["alpha_calibration_final"] == 0.5
    assert recorded["constants_from"].startswith("run-length rule, 2")


def _planned_steps(tokens_per_param: float, shortfall: int = 0) -> list[str]:
    """train.steps for the first step count that plans `tokens_per_param` on SMALL, less
    `shortfall` steps, as an override."""
    cfg = small_config([], SMALL)
    tokens_per_step = cfg.train.global_batch_size * cfg.model.seq_length
    steps = math.ceil(tokens_per_param * count_parameters(cfg.model).total / tokens_per_step)
    return [f"train.steps={steps - shortfall}"]


def test_auto_constants_follow_the_planned_run_length():
    """`auto` is 2 / 1 below 2 planned tokens per parameter and 1 / 0.5 from 2 on; a number
    set in the config wins for its role only, and the final norm follows the FFN norms."""

    def constants(*overrides: str):
        c = calibration_constants(small_config(list(overrides), SMALL))
        return (c.attention, c.other, c.final), c.source

    assert constants(*_planned_steps(2.0, shortfall=1))[0] == (2.0, 1.0, 1.0)
    long, source = constants(*_planned_steps(2.0))
    assert long == (1.0, 0.5, 0.5)
    assert source.startswith("run-length rule, 2")
    assert constants(*_planned_steps(10), "model.alpha_calibration_attention=3")[0] == (3, 0.5, 0.5)
    assert constants("model.alpha_calibration_final=0.25")[0] == (2.0, 1.0, 0.25)
    both = constants("model.alpha_calibration_attention=4", "model.alpha_calibration_other=3")
    assert both == ((4.0, 3.0, 3.0), "config")


def _resume(rank: int, world_size: int, run_dir: str) -> None:
    train_small(
        [f"run.dir={run_dir}", "train.steps=4", "train.save_interval=2", "train.stop_at_step=2"],
        SMALL,
    )
    (Path(run_dir) / "calibration.json").rename(Path(run_dir) / "first-calibration.json")
    # a resume with other calibration constants must keep the checkpointed α
    train_small(
        [
            f"run.dir={run_dir}",
            "train.steps=4",
            "train.save_interval=2",
            "model.alpha_calibration_attention=20",
        ],
        SMALL,
    )


@pytest.mark.multiprocess
def test_resumed_run_does_not_recalibrate(tmp_path):
    run_distributed(_resume, world_size=1, run_dir=str(tmp_path))
    assert not (tmp_path / "calibration.json").exists()  # nothing was calibrated again
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    key = "norm/alpha/layer0.attention"
    alpha = {r["step"]: r[key] for r in records if key in r}
    first = json.loads((tmp_path / "first-calibration.json").read_text())["norms"][0]["alpha"]
    assert alpha[0] == pytest.approx(first)
    assert sorted(alpha) == [0, 1, 2, 3, 4]
    # continuity across the resume at step 2: an Adam step moves α by about lr, not by ×10
    assert math.isclose(alpha[3], alpha[2], rel_tol=0.05)
    assert alpha[3] < 5 * first  # recalibrating with c=20 instead of 2 would give about 10×
