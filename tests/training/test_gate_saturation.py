"""The SwiGLU gate in the saturation monitor, and the regime diagnostic.

The gate statistics of a real model (megatron-core's MLP) must equal a direct computation: the
layer's MLP input times the gate half of its linear_fc1 weight, in float64. Layer 0's gate rows
are scaled up so its gate straddles the threshold, and its up half does not: reading the wrong
half, the wrong sign or the wrong layer fails. At TP=2 (with and without sequence parallelism)
the monitor, summing each rank's column slice, must give the TP=1 figures.
"""

from __future__ import annotations

import pytest
import torch
from helpers import metrics_records, small_config, train_small

from megadyt.config.schema import TrainConfig
from megadyt.norms.layers import MONITOR_MAX_ROWS
from megadyt.parallel.testing import run_distributed
from megadyt.training.saturation import SaturationMonitor, regime_diagnostic

BATCH = 40  # 40 sequences x 32 tokens = 1,280 rows: the monitor reads every 2nd row


def _tokens() -> torch.Tensor:
    return torch.randint(0, 256, (BATCH, 32), generator=torch.Generator().manual_seed(3))


def _model(norm: str, tp: int = 1, sp: bool = False):
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything

    seed_everything(5)
    cfg = small_config([f"model.norm={norm}", f"parallel.tp={tp}", f"parallel.sp={sp}"])
    return build_model(cfg).eval()


def _hot_layer0(model) -> None:
    """Scale the gate rows of layer 0's linear_fc1 (TP=1 layout: [gate; up]) by 12."""
    with torch.no_grad():
        w = model.decoder.layers[0].mlp.linear_fc1.weight
        w[: w.shape[0] // 2] *= 12


def _direct(model, tokens) -> tuple[dict[str, float], float]:
    """(gate metrics from each MLP's input and fc1 weight in float64, on the rows the monitor
    samples; layer 0's saturated fraction of the *up* half, which must differ)."""
    inputs = {}
    hooks = [
        layer.mlp.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0]))
        for i, layer in enumerate(model.decoder.layers)
    ]
    with torch.no_grad():
        model(tokens)
    for hook in hooks:
        hook.remove()
    out, fractions, up_fraction = {}, [], None
    for i, layer in enumerate(model.decoder.layers):
        rows = inputs[i].detach().double().reshape(-1, inputs[i].shape[-1])
        rows = rows[:: -(-rows.shape[0] // MONITOR_MAX_ROWS)]
        w = layer.mlp.linear_fc1.weight.double()
        gate, up = rows @ w[: w.shape[0] // 2].T, rows @ w[w.shape[0] // 2 :].T
        fraction = float((gate < -4).double().mean())
        out[f"gate/saturated/layer{i}"] = fraction
        out[f"gate/input_rms/layer{i}"] = float(gate.pow(2).mean().sqrt())
        fractions.append(fraction)
        if i == 0:
            up_fraction = float((up < -4).double().mean())
    out["gate/saturated/mean"] = sum(fractions) / len(fractions)
    return out, up_fraction


def _monitored(model, tokens) -> dict[str, float]:
    monitor = SaturationMonitor(model, patience=1)
    monitor.arm()
    with torch.no_grad():
        model(tokens)
    got = {k: v for k, v in monitor.collect(torch.device("cpu")).items() if k.startswith("gate")}
    with torch.no_grad():
        model(tokens)  # disarmed: records nothing
    assert all(probe.sums is None and not probe.armed for _, probe in monitor.gates)
    return got


@pytest.mark.parametrize("norm", ["dyt", "rmsnorm"])
def test_gate_metrics_equal_a_direct_computation(tp1_distributed, norm):
    model = _model(norm)
    _hot_layer0(model)
    tokens = _tokens()
    want, up_fraction = _direct(model, tokens)
    got = _monitored(model, tokens)
    assert got.keys() == want.keys()
    samples = 32 * BATCH // 2 * 48  # rows read x gate units (ffn 96: 48 gate, 48 up)
    assert got == pytest.approx(want, rel=1e-5, abs=1.5 / samples)
    assert 0.05 < got["gate/saturated/layer0"] < 0.95  # straddles -4
    assert abs(up_fraction - got["gate/saturated/layer0"]) > 0.05  # the halves differ
    assert got["gate/saturated/layer1"] < 0.01  # an unscaled layer at init


def _tp_rank(rank: int, world_size: int, state: dict, tokens: torch.Tensor) -> list[dict]:
    from megadyt.parallel.distributed import init_distributed
    from megadyt.parallel.tp_shards import shard_state_dict

    init_distributed(tp=world_size)
    out = []
    for sp in (False, True):
        model = _model("dyt", world_size, sp)
        model.load_state_dict(shard_state_dict(state, model, rank, world_size), strict=False)
        out.append(_monitored(model, tokens))
    return out


@pytest.mark.multiprocess
def test_gate_metrics_at_tp2_equal_tp1(tp1_distributed):
    model = _model("dyt")
    _hot_layer0(model)
    tokens = _tokens()
    want, _ = _direct(model, tokens)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if "_extra" not in k}
    ranks = run_distributed(_tp_rank, world_size=2, state=state, tokens=tokens)
    samples = 32 * BATCH // 2 * 48
    for got in (row for rank in ranks for row in rank):
        assert got == pytest.approx(want, rel=1e-5, abs=1.5 / samples)
    assert 0.05 < want["gate/saturated/layer0"] < 0.95


def test_diagnostic_step_default_and_off():
    assert TrainConfig(steps=300).resolved_regime_diagnostic_step == 30  # 10% of a short run
    assert TrainConfig(steps=20_000).resolved_regime_diagnostic_step == 500  # Verma's step
    assert TrainConfig(steps=5).resolved_regime_diagnostic_step == 1
    assert TrainConfig(regime_diagnostic_step=0).resolved_regime_diagnostic_step is None
    assert TrainConfig(regime_diagnostic_step=7).resolved_regime_diagnostic_step == 7


def test_regime_reading():
    high = {"norm/saturated/a": 0.5, "norm/saturated/b": 0.3, "gate/saturated/mean": 0.1}
    values, detail = regime_diagnostic({**high, "norm/input_rms/a": 9.0})
    assert values == pytest.approx(
        {
            "regime/norm_saturated": 0.4,
            "regime/verma_predicts_squashing_ahead": 1.0,
            "regime/gate_saturated": 0.1,
        }
    )
    assert "40.0%" in detail and "scarce-data" in detail and "10.0%" in detail
    low, _ = regime_diagnostic({"norm/saturated/a": 0.2, "norm/saturated/b": 0.3})
    assert low["regime/verma_predicts_squashing_ahead"] == 0.0
    rms, detail = regime_diagnostic({"gate/saturated/mean": 0.2, "norm/input_rms/final": 1.0})
    assert rms == {"regime/gate_saturated": 0.2} and "no DyT/Derf norm" in detail


def test_training_logs_the_gate_and_one_diagnostic_off_the_log_steps(tmp_path):
    steps = ["train.steps=3", "train.log_interval=10", "train.regime_diagnostic_step=2"]
    train_small([f"run.dir={tmp_path}", *steps])
    records = metrics_records(tmp_path)
    events = [r for r in records if r.get("event") == "regime_diagnostic"]
    assert [e["step"] for e in events] == [2]  # step 2 is not a log step: sampled for it
    assert 0.0 <= events[0]["regime/norm_saturated"] <= 1.0
    assert 0.0 <= events[0]["regime/gate_saturated"] <= 1.0
    assert events[0]["detail"].startswith("regime diagnostic: ")
    logged = [r for r in records if "loss" in r]
    assert [r["step"] for r in logged] == [3]
    assert {"gate/saturated/layer0", "gate/saturated/layer1", "gate/saturated/mean"} <= set(
        logged[0]
    )
