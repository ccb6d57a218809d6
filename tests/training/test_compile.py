"""Compiled transformer layers (train.compile): one graph per layer with no break (TP=1 and
TP=2 with SP), the eager loss curve under TP/SP, ZeRO and activation recompute, an exact resume,
and the compile time in the log.

Compiling on 2 CPU cores costs tens of seconds per new graph, so the training runs share two
spawned processes, each layout compiling as few new graphs as it can.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SMALL_MODEL, metrics_records, small_config, train_small

from megadyt.config.schema import Config
from megadyt.errors import ConfigError
from megadyt.parallel.testing import run_distributed
from megadyt.training.compile import compile_enabled, explain_layer

NORMS = ("rmsnorm", "dyt", "derf")
# SMALL_TRAINING shortened: 6 steps, a save and an evaluation at 3
SHORT = ["train.steps=6", "train.save_interval=3", "train.eval_interval=3"]


def _graphs(norm: str, overrides: list[str] = ()) -> tuple[int, list[str]]:
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything

    seed_everything(0)
    cfg = small_config([f"model.norm={norm}", "model.num_layers=1", *overrides], SMALL_MODEL)
    return explain_layer(build_model(cfg))


@pytest.mark.parametrize("norm", NORMS)
def test_a_layer_is_one_graph(tp1_distributed, norm):
    graphs, breaks = _graphs(norm)
    assert breaks == [] and graphs == 1, breaks


def _two_processes(rank: int, world_size: int, tmp: str) -> dict:
    """Each norm's layer traced at TP=2 with SP; then compiled training at TP=2, SP, ZeRO-1 and
    full recompute (which adds the layers' no-grad variant)."""
    from megadyt.parallel.distributed import init_distributed

    init_distributed(tp=2)
    graphs = {norm: _graphs(norm, ["parallel.tp=2", "parallel.sp=true"]) for norm in NORMS}
    layout = ["parallel.tp=2", "parallel.sp=true", "parallel.zero_stage=1"]
    losses = train_small(
        [*SHORT, "train.compile=on", *layout, "parallel.recompute=full", f"run.dir={tmp}/tp"]
    ).losses
    return {"graphs": graphs, "tp2-sp-full": losses}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("tp2")
    return run_distributed(_two_processes, world_size=2, timeout=900, tmp=str(tmp))[0]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_a_layer_is_one_graph_under_tp2_sp(two_processes):
    for norm, (graphs, breaks) in two_processes["graphs"].items():
        assert breaks == [] and graphs == 1, (norm, breaks)


def test_auto_compiles_on_cuda_only():
    assert compile_enabled(small_config(["train.compile=auto"])) == torch.cuda.is_available()
    assert compile_enabled(small_config(["train.compile=on"]))
    assert not compile_enabled(small_config(["train.compile=off"]))
    assert Config().train.compile == "auto"
    with pytest.raises(ConfigError, match="train.compile.*'auto' \\| 'on' \\| 'off'"):
        small_config(["train.compile=always"])


def _one_process(rank: int, world_size: int, tmp: str) -> dict:
    """Eager; compiled; compiled stopped at step 3 and resumed; compiled ZeRO-3 with selective
    recompute (DeepSpeed's ZeRO-3 hooks run between graphs)."""
    compiled = [*SHORT, "train.compile=on"]
    return {
        "eager": train_small([*SHORT, f"run.dir={tmp}/eager"]).losses,
        "compiled": train_small([*compiled, f"run.dir={tmp}/compiled"]).losses,
        "first": train_small([*compiled, f"run.dir={tmp}/split", "train.stop_at_step=3"]).losses,
        "second": train_small([*compiled, f"run.dir={tmp}/split"]).losses,
        "zero3-selective": train_small(
            [
                *compiled,
                f"run.dir={tmp}/z3",
                "parallel.zero_stage=3",
                "parallel.recompute=selective",
            ]
        ).losses,
    }


@pytest.mark.multiprocess
@pytest.mark.slow
def test_compiled_training_follows_eager_and_resumes_exactly(tmp_path, two_processes):
    runs = run_distributed(_one_process, world_size=1, timeout=900, tmp=str(tmp_path))[0]
    runs["tp2-sp-full"] = two_processes["tp2-sp-full"]
    eager = runs.pop("eager")
    assert sorted(eager) == [1, 2, 3, 4, 5, 6] and eager[6] < eager[1]  # it learns
    first, second = runs.pop("first"), runs.pop("second")
    assert sorted(first) == [1, 2, 3] and sorted(second) == [4, 5, 6]
    for step, loss in {**first, **second}.items():  # the resume is bitwise
        assert loss == runs["compiled"][step], (step, loss, runs["compiled"][step])
    want = torch.tensor([eager[s] for s in sorted(eager)])
    for name, losses in runs.items():
        got = torch.tensor([losses[s] for s in sorted(losses)])
        torch.testing.assert_close(
            got, want, rtol=2e-4, atol=2e-5, msg=lambda m, n=name: f"{n} diverges from eager: {m}"
        )
    # the first step reports what it spent compiling: one line and one metrics.jsonl record
    events = [r for r in metrics_records(tmp_path / "compiled") if r.get("event") == "compiled"]
    assert len(events) == 1 and events[0]["step"] == 1, events
    assert events[0]["compile/layers"] == 2 and events[0]["compile/graph_breaks"] == 0
    assert events[0]["compile/seconds"] > 0
    assert events[0]["detail"].startswith("compiled 2 layers in ")
    eager_events = [r for r in metrics_records(tmp_path / "eager") if r.get("event")]
    assert not [r for r in eager_events if r["event"] == "compiled"]
