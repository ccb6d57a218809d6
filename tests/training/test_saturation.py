"""The saturation monitor: per-norm input RMS, saturated fraction and mean derivative, equal to a
direct computation; the final-norm warning; and the series a real training run logs."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SMALL_TRAINING, TokenSource, metrics_records, train_small
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.norms import Derf, DyT, RMSNorm
from megadyt.norms.layers import MONITOR_MAX_ROWS
from megadyt.parallel.testing import run_distributed
from megadyt.training.saturation import SaturationMonitor, scalars_from_sums

H = 16


def _config() -> TransformerConfig:
    return TransformerConfig(
        num_layers=1, hidden_size=H, num_attention_heads=1, use_cpu_initialization=True
    )


class _Stack(torch.nn.Module):
    """Three norms in a row, named like megatron's final norm and two layer norms."""

    def __init__(self) -> None:
        super().__init__()
        cfg = _config()
        self.dyt = DyT(cfg, H, alpha0=1.5)
        self.derf = Derf(cfg, H, alpha0=0.7, shift0=0.3)
        self.rms = RMSNorm(cfg, H)

    def forward(self, x):
        return self.dyt(x), self.derf(2 * x), self.rms(x)


def test_metrics_equal_a_direct_computation():
    stack = _Stack()
    x = torch.randn(4, 7, H, generator=torch.Generator().manual_seed(1)) * 1.7
    monitor = SaturationMonitor(stack, patience=1)
    monitor.arm()
    stack(x)
    got = monitor.collect(torch.device("cpu"))  # no process group: local sums
    xd = x.double()
    alpha_derf, shift = float(stack.derf.alpha.detach()), float(stack.derf.shift.detach())
    u_dyt, u_derf = 1.5 * xd, alpha_derf * (2 * xd) + shift  # fp32 parameters, as stored
    want = {
        "norm/input_rms/dyt": float(xd.pow(2).mean().sqrt()),
        "norm/saturated/dyt": float((u_dyt.abs() > 2).double().mean()),
        "norm/derivative/dyt": float((1 - torch.tanh(u_dyt) ** 2).mean()),
        "norm/input_rms/derf": float((2 * xd).pow(2).mean().sqrt()),
        "norm/saturated/derf": float((u_derf.abs() > 2).double().mean()),
        "norm/derivative/derf": float((2 / math.sqrt(math.pi) * torch.exp(-(u_derf**2))).mean()),
        "norm/input_rms/rms": float(xd.pow(2).mean().sqrt()),
    }
    assert got == pytest.approx(want, rel=1e-6)  # float32 elementwise, float64 sums
    assert 0.0 < got["norm/saturated/dyt"] < 1.0  # the input straddles the threshold
    # disarmed after collecting: the next forward records nothing
    stack(x)
    assert all(m.saturation is None for _, m in monitor.norms)


def test_a_long_input_is_sampled_on_evenly_strided_rows():
    """Past MONITOR_MAX_ROWS token rows, the statistics are those of every k-th row (k the
    smallest stride that fits), so their cost stays bounded at any batch size."""
    stack = _Stack()
    rows = 2 * MONITOR_MAX_ROWS + 5  # stride 3
    x = torch.randn(rows, 1, H, generator=torch.Generator().manual_seed(2)) * 1.7
    monitor = SaturationMonitor(stack, patience=1)
    monitor.arm()
    stack(x)
    sums = {name: module.saturation for name, module in monitor.norms}
    sample = x.reshape(-1, H)[::3].double()
    assert sample.shape[0] <= MONITOR_MAX_ROWS < sample.shape[0] * 3 // 2
    u = 1.5 * sample
    want = [sample.numel(), float(sample.pow(2).sum()), float((u.abs() > 2).sum()),
            float((1 - torch.tanh(u) ** 2).sum())]  # fmt: skip
    assert sums["dyt"].tolist() == pytest.approx(want, rel=1e-6)
    assert sums["rms"].tolist()[:2] == pytest.approx(want[:2], rel=1e-6)


def test_rows_that_recorded_nothing_are_skipped():
    stack = _Stack()
    sums = torch.zeros(3, 4, dtype=torch.float64)
    sums[2] = torch.tensor([4.0, 16.0, 0.0, 0.0])
    assert scalars_from_sums(SaturationMonitor(stack, 1).norms, sums) == {"norm/input_rms/rms": 2.0}


def test_final_norm_alert_after_patience_once():
    monitor = SaturationMonitor(torch.nn.Module(), patience=3)
    high, low = {"norm/saturated/final": 0.95}, {"norm/saturated/final": 0.5}
    assert monitor.alert(10, high) is None
    assert monitor.alert(20, low) is None  # the streak restarts
    assert [monitor.alert(s, high) for s in (30, 40)] == [None, None]
    message = monitor.alert(50, high)
    assert message and "since step 30" in message and "95.0%" in message
    assert "model.alpha_init=calibrate" in message
    assert monitor.alert(60, high) is None  # once per run
    assert monitor.alert(70, {}) is None  # RMSNorm: nothing to judge


# the small training config, 4 steps of 4 sequences, every step logged
SMALL = [
    *SMALL_TRAINING,
    "train.steps=4",
    "train.global_batch_size=4",
    "train.eval_interval=100",
    "train.save_interval=100",
    "train.saturation_patience=2",
]


def _train(rank: int, world_size: int, overrides: list[str]) -> None:
    for extra in overrides:
        train_small(extra, SMALL, data=(TokenSource(16, 32, 0), TokenSource(4, 32, 1)))


@pytest.mark.multiprocess
def test_training_logs_saturation_and_warns(tmp_path):
    run_distributed(
        _train,
        world_size=2,
        overrides=[
            # α₀ = 1000 on the final norm: saturated from the first step
            [
                f"run.dir={tmp_path}/hot",
                "model.alpha_init=rule",
                "model.alpha0_attention=0.5",
                "model.alpha0_final=1000",
                "parallel.zero_stage=3",
            ],
            [f"run.dir={tmp_path}/rms", "model.norm=rmsnorm"],
        ],
    )
    hot = metrics_records(tmp_path / "hot")
    logged = [r for r in hot if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    for r in logged:
        assert r["norm/saturated/final"] > 0.99
        assert r["norm/derivative/final"] < 0.01
        assert 0.0 <= r["norm/saturated/layer0.attention"] < 0.5
        assert r["norm/input_rms/layer1.ffn"] > 0
    warnings = [r for r in hot if r.get("event") == "saturation_warning"]
    assert [w["step"] for w in warnings] == [2]  # after 2 log intervals, once
    assert "final norm" in warnings[0]["detail"]
    rms = [r for r in metrics_records(tmp_path / "rms") if "loss" in r]
    assert all("norm/input_rms/final" in r for r in rms)
    assert not any(k.startswith("norm/saturated") for r in rms for k in r)
