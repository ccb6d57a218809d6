"""GPU check of training: `megadyt train` of configs/tiny/dyt.yaml in bf16 over NCCL on one GPU
(its layers compiled: train.compile is on with CUDA) stops at step 4, resumes with the losses
of an uninterrupted run, and its checkpoint evaluates with `megadyt eval` on CUDA; and a
transformer layer traces to one graph on CUDA for every norm. Skipped without CUDA;
benchmarks/gpu_check.sh runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, SMALL_MODEL, clean_env, metrics_records, small_config, train_command

pytestmark = pytest.mark.gpu

# ------------------------------------------------------------------------- bf16 training


def _train_records(run_dir: Path) -> list[dict]:
    """The per-step records of metrics.jsonl (not events)."""
    records = metrics_records(run_dir)
    return [r for r in records if "loss" in r and "event" not in r]


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> loss (a step logged twice keeps the last)."""
    return {r["step"]: r["loss"] for r in _train_records(run_dir)}


class _Proc:
    """A subprocess from ROOT whose output goes to files (no pipe can fill up and block it
    while another process is being waited for)."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]):
        self.log = log
        with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)

    def wait_until(self, predicate, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, f"{self.log.name} exited early:\n{self.stderr()}"
            assert time.monotonic() < deadline, f"{self.log.name}: timed out"
            time.sleep(0.2)

    def stderr(self) -> str:
        return self.log.with_suffix(".err").read_text()[-3000:]

    def finish(self, timeout: float = 300) -> str:
        """Wait for exit 0 (killing it after `timeout` s); its stdout."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.log.name}: still running after {timeout} s")
        out = self.log.with_suffix(".out").read_text()
        assert self.proc.returncode == 0, (
            f"{self.log.name} exited {self.proc.returncode}:\n{out[-2000:]}\n{self.stderr()}"
        )
        return out


def _train(run_dir: Path, log: Path, *extra: str) -> _Proc:
    """`megadyt train --config configs/tiny/dyt.yaml` (helpers.CLI_SMALL_RUN: width 64,
    2 layers, 64 tokens, ZeRO-1, the built-in corpus cached in ROOT/data_cache): 8 steps,
    checkpoints every 4, NCCL named explicitly; bf16 comes from train.precision=auto."""
    cmd = train_command(run_dir, 8, 4) + ["--set", "parallel.backend=nccl"]
    for item in extra:
        cmd += ["--set", item]
    return _Proc(cmd, log, clean_env(OMP_NUM_THREADS="4"))


def test_bf16_nccl_training_resumes_exactly_and_evaluates(tmp_path):
    """Straight 8-step run and the first half (stop_at_step=4) of a split run side by side on
    the GPU; then the split run resumes from step 4 while the straight run is evaluated.

    Resumed losses (steps 5-8) must equal the straight run's bit for bit when the GPU kernels
    are reproducible, which the two fresh runs show: if their steps 1-4 agree exactly, steps
    5-8 must too (step 5 is a forward of the restored state; 6-8 also need the optimizer state,
    LR schedule and data position). If steps 2-4 already differ between two fresh processes
    (non-deterministic backward kernels), every step must agree within 1e-3 relative: bf16
    reordering moves a loss by ~1e-4 after a few steps; a resume bug (wrong batch, reset Adam
    moments, wrong LR) by about 1e-2. Step 1 (a forward of the seeded init) is always exact."""
    from megadyt.training.run.layout import RunDir, tag_for, weights_file

    straight_dir, split_dir = tmp_path / "straight", tmp_path / "split"
    straight_proc = _train(straight_dir, tmp_path / "straight.log")
    # the first run builds the corpus cache (ROOT/data_cache); start the second once it trains
    straight_proc.wait_until(lambda: RunDir(straight_dir).metrics.is_file())
    first_proc = _train(split_dir, tmp_path / "first.log", "train.stop_at_step=4")
    straight_proc.finish()
    first_proc.finish()
    first = _losses(split_dir)
    assert sorted(first) == [1, 2, 3, 4]
    assert RunDir(split_dir).latest_tag() == tag_for(4)

    second_proc = _train(split_dir, tmp_path / "second.log")
    eval_json = tmp_path / "eval.json"
    eval_cmd = [sys.executable, "-m", "megadyt", "eval", "--checkpoint", str(straight_dir)]
    eval_cmd += ["--tasks", "offline", "--limit", "8", "--device", "cuda"]
    eval_proc = _Proc(
        [*eval_cmd, "--output", str(eval_json)],
        tmp_path / "eval.log",
        clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"),
    )
    second_out = second_proc.finish()
    eval_out = eval_proc.finish()

    # --- resume: the same losses as the uninterrupted run
    straight = _losses(straight_dir)
    resumed = _losses(split_dir)
    assert sorted(straight) == list(range(1, 9))
    assert sorted(resumed) == list(range(1, 9))
    assert "resumed from" in second_out and "step_0000004" in second_out, second_out[-2000:]
    assert RunDir(split_dir).latest_tag() == tag_for(8)
    assert all(torch.isfinite(torch.tensor(v)) for v in straight.values()), straight
    assert first[1] == straight[1], (first[1], straight[1])
    deterministic = all(first[s] == straight[s] for s in range(1, 5))
    for step in range(1, 9):
        if deterministic:
            assert resumed[step] == straight[step], (step, resumed[step], straight[step])
        else:
            assert resumed[step] == pytest.approx(straight[step], rel=1e-3), step

    # --- precision and memory: bf16 weights, GPU memory reported
    config = RunDir(straight_dir).read_config()
    assert config["train"]["precision"] in ("auto", "bf16")
    assert config["parallel"]["backend"] == "nccl"
    state = torch.load(
        weights_file(RunDir(straight_dir).tag_dir(tag_for(8)), 0),
        map_location="cpu",
        weights_only=True,
    )["state"]
    matrices = {n: t.dtype for n, t in state.items() if t.dim() >= 2}
    assert matrices and all(d == torch.bfloat16 for d in matrices.values()), matrices
    memory = [r["perf/memory_gb"] for r in _train_records(straight_dir)]
    assert len(memory) == 8 and all(0 < m < 80 for m in memory), memory
    compiled = [r for r in metrics_records(straight_dir) if r.get("event") == "compiled"]
    assert len(compiled) == 1 and compiled[0]["compile/graph_breaks"] == 0, compiled

    # --- evaluation on CUDA: a table, every offline task scored
    assert "| task | metric | score |" in eval_out and "**average**" in eval_out, eval_out
    result = json.loads(eval_json.read_text())
    assert result["step"] == 8 and not result["errors"] and result["tasks"], result
    for name, task in result["tasks"].items():
        assert task["value"] == task["value"], f"{name}: NaN score"


# ------------------------------------------------------------------- compiled layers on CUDA


@pytest.mark.parametrize("norm", ["rmsnorm", "dyt", "derf"])
def test_a_layer_is_one_graph_on_cuda(tp1_distributed, norm):
    """On CUDA the norms' auto impl is the Triton kernel: inside a compiled layer it must give
    way to the formula, and nothing else in the layer may split the graph."""
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything
    from megadyt.training.compile import explain_layer

    seed_everything(0)
    cfg = small_config([f"model.norm={norm}", "model.num_layers=1"], SMALL_MODEL)
    graphs, breaks = explain_layer(build_model(cfg).cuda())
    assert breaks == [] and graphs == 1, breaks
