"""`megadyt plan`'s checkpoint section: bytes from the parameter count, time against the stated
file-system bandwidth, the bandwidth's validation, and the estimate against real files."""

from __future__ import annotations

import json

import pytest
from helpers import ROOT, TINY_CLI_RUN, train_tiny

from megadyt.cli.main import main
from megadyt.config import load_config
from megadyt.model.counting import count_parameters
from megadyt.planning import make_plan
from megadyt.training.run.layout import MANIFEST_FILE, RunDir, tag_for

PRESET_7B = ["plan", "--config", "configs/llama-7b/dyt.yaml", "--nodes", "64"]
PRESET_7B += ["--gpus-per-node", "8"]
# The real checkpoint may exceed the estimate by fixed per-file metadata the model leaves out:
# pickle/zip headers, parameter names, DeepSpeed's ds_config and param_shapes, the config in
# each weights file (about 10-30 kB per file: +0.2-0.5% measured on the tiny model's 1-9 MB files;
# nothing at 7B). ZeRO's alignment padding is a few elements.
SIZE_TOLERANCE = 0.01


def _plan_json(capsys, *extra: str) -> dict:
    assert main([*PRESET_7B, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _shard_params(cfg) -> float:
    """Parameters of one TP shard: matmuls split over TP, norm parameters on every TP rank."""
    c = count_parameters(cfg.model)
    return (c.total - c.norm) / cfg.parallel.tp + c.norm


def test_7b_checkpoint_bytes_follow_from_the_parameter_count(capsys):
    out = _plan_json(capsys)
    cfg = load_config(str(ROOT / "configs/llama-7b/dyt.yaml"), [])
    tp = cfg.parallel.tp
    assert out["params_total"] == count_parameters(cfg.model).total
    all_shards = tp * _shard_params(cfg)  # bf16, ZeRO-1: module bf16, optimizer 12 B/param
    ckpt = out["checkpoint"]
    assert ckpt["model"] == pytest.approx(2 * all_shards)
    assert ckpt["optimizer"] == pytest.approx(12 * all_shards)  # fp32 master + Adam m, v
    # the weights copy (module's bf16) only in the run's last save: ZeRO-1's module states
    # hold the weights already
    assert ckpt["weights"] == 0 and ckpt["final_weights"] == pytest.approx(2 * all_shards)
    assert 0 < ckpt["rng"] < 1e-3 * ckpt["total"]
    assert ckpt["total"] == pytest.approx(14 * all_shards + ckpt["rng"])


def test_layout_decides_where_the_bytes_go():
    cfg = load_config(str(ROOT / "configs/llama-7b/dyt.yaml"), ["parallel.zero_stage=3"])
    n = 2 * _shard_params(cfg)
    z3 = make_plan(cfg, nodes=64, gpus_per_node=8).checkpoint
    assert z3.model == 0 and z3.optimizer == pytest.approx(12 * n)  # module states: placeholders
    assert z3.weights == pytest.approx(2 * n) and z3.final_weights == 0  # a copy in every save
    cfg = load_config(str(ROOT / "configs/llama-7b/dyt.yaml"), ["parallel.zero_stage=0"])
    fp32 = make_plan(cfg, nodes=64, gpus_per_node=8, device="cpu").checkpoint
    assert fp32.model == pytest.approx(4 * n) and fp32.weights == 0
    assert fp32.final_weights == pytest.approx(4 * n)
    assert fp32.optimizer == pytest.approx(8 * n)  # torch's AdamW: m, v; no master copy


def test_save_time_scales_inversely_with_the_bandwidth(capsys):
    slow = _plan_json(capsys, "--fs-bandwidth-gbs", "2.5")["checkpoint"]
    fast = _plan_json(capsys, "--fs-bandwidth-gbs", "10")["checkpoint"]
    assert slow["total"] == fast["total"]
    assert slow["write_s"] == pytest.approx(slow["total"] / 2.5e9)
    assert slow["write_s"] == pytest.approx(4 * fast["write_s"])
    assert main([*PRESET_7B, "--fs-bandwidth-gbs", "10"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("checkpoint"))
    assert " per save (model " in line and line.endswith(" at 10 GB/s")


@pytest.mark.parametrize("bandwidth", ["0", "-5", "nan"])
def test_non_positive_bandwidth_is_a_one_line_error(capsys, bandwidth):
    assert main([*PRESET_7B, f"--fs-bandwidth-gbs={bandwidth}"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().splitlines() == [
        f"megadyt: error: --fs-bandwidth-gbs must be a positive number, got {float(bandwidth)}"
    ]


@pytest.mark.parametrize(
    "extra",
    [["train.precision=fp32"], ["train.precision=bf16", "parallel.zero_stage=0"]],
    ids=["fp32-zero1", "bf16-zero0"],
)
def test_estimate_matches_a_real_tiny_checkpoint(tmp_path, extra):
    run = RunDir(train_tiny(tmp_path / "run", extra=extra))
    tag_dir = run.tag_dir(run.latest_tag())
    files = [p for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST_FILE]
    on_disk = sum(p.stat().st_size for p in files)
    cfg = load_config(str(ROOT / "configs/tiny/dyt.yaml"), [*TINY_CLI_RUN, *extra])
    plan = make_plan(cfg, nodes=1, gpus_per_node=1, device="cpu").checkpoint
    estimate = plan.total + plan.final_weights  # step 4 is the run's last save
    assert 0 <= on_disk / estimate - 1 <= SIZE_TOLERANCE, (on_disk, estimate, files)


PRESET_70B = ["plan", "--config", "configs/llama-70b/dyt.yaml", "--nodes", "64"]
PRESET_70B += ["--gpus-per-node", "8"]


def test_the_stop_must_fit_the_signal_lead(capsys):
    """A graceful stop is the step in progress plus one save; SLURM's lead before the time
    limit (or a preemption's grace) must cover it, or the job is refused with the fix."""
    assert main([*PRESET_70B, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["stop_s"] == plan["step_time_s"] + plan["checkpoint"]["save_s"]
    assert 300 < plan["stop_s"] < 600  # 70B at 5 GB/s: why the sbatch default lead is 600 s

    assert main([*PRESET_70B, "--stop-grace-s", "300"]) == 2
    err = capsys.readouterr().err
    lead = 60 * -(-1.5 * plan["stop_s"] // 60)
    assert err.count("\n") == 1 and f"--signal=B:USR1@{lead:.0f} and STOP_GRACE_S" in err
    assert main([*PRESET_70B, "--stop-grace-s", "600"]) == 0
    assert "grace 10.0 min: fits" in capsys.readouterr().out


def test_remaining_steps_reads_the_runs_latest_checkpoint(tmp_path, capsys):
    args = ["plan", "--config", "configs/tiny/dyt.yaml", "--set", f"run.dir={tmp_path}",
            "--set", "train.steps=30", "--print", "remaining_steps"]  # fmt: skip
    assert main(args) == 0 and capsys.readouterr().out == "30\n"  # a fresh run
    RunDir(tmp_path).publish_latest(tag_for(12))
    assert main(args) == 0 and capsys.readouterr().out == "18\n"
    RunDir(tmp_path).publish_latest(tag_for(30))
    assert main(args) == 0 and capsys.readouterr().out == "0\n"
