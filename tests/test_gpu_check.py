"""The GPU check is ready before a GPU is: its plan fits 8 minutes with every file it needs, its
smoke mode runs every stage end to end on this CPU, and a stage that overruns its guard is cut
while the next one still runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, clean_env

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
DRIVER = ROOT / "benchmarks" / "gpu_check.py"
PLAN = ["install", "start-up", "kernels", "train", "profile", "memory", "gpu-tests"]
STAGES = PLAN[2:]  # what the driver runs, each with its JSON
BUDGET_S = 8 * 60  # the whole check must fit a 15-minute GPU loan with time to rerun it


def _run(cmd: list[str], cwd=ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


def test_dry_run_plans_every_stage_within_the_budget():
    proc = _run(["bash", str(SCRIPT), "--dry-run"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = [line.split() for line in proc.stdout.splitlines() if not line.startswith(" ")]
    names = [s[0] for s in stages]
    assert names == [*PLAN, "total"], names
    seconds = {s[0]: float(s[1]) for s in stages}
    assert sum(seconds[n] for n in PLAN) == seconds["total"] <= BUDGET_S
    configs = [line.split() for line in proc.stdout.splitlines() if line.startswith(" ")]
    assert sum(float(c[0]) for c in configs) <= seconds["train"]
    assert {" ".join(c[2:]) for c in configs} >= {"hf eager", "hf compiled", "dyt compiled"}


def test_dry_run_names_a_missing_file(tmp_path):
    """The plan needs no package (system python3 here) and names each file it cannot find."""
    (tmp_path / "benchmarks").mkdir()
    for name in ("gpu_check.sh", "gpu_check.py", "gpu_stages.py"):
        shutil.copy(ROOT / "benchmarks" / name, tmp_path / "benchmarks" / name)
    proc = _run(["bash", str(tmp_path / "benchmarks" / "gpu_check.sh"), "--dry-run"], tmp_path)
    assert proc.returncode == 2
    assert "missing: benchmarks/norms.py" in proc.stderr
    assert "missing: tests/test_gpu_training.py" in proc.stderr


def test_unknown_option_is_one_line_and_exit_2():
    proc = _run(["bash", str(SCRIPT), "--fast"])
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--fast" in proc.stderr


def test_an_overrun_stage_is_cut_and_the_next_still_runs(tmp_path):
    cmd = [sys.executable, str(DRIVER), "--smoke", "--out", str(tmp_path)]
    cmd += ["--stages", "kernels", "gpu-tests", "--budget", "kernels=0.01"]
    proc = _run(cmd, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a stage did not pass
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    assert kernels["status"].startswith("timed out"), kernels
    tests = json.loads((tmp_path / "gpu-tests.json").read_text())
    assert tests["status"] == "ok" and tests["counts"].get("SKIPPED", 0) > 0, tests  # no CUDA
    summary = (tmp_path / "summary.md").read_text()
    assert "| kernels | timed out" in summary and "| gpu-tests | ok" in summary


@pytest.mark.slow
def test_smoke_runs_every_stage_end_to_end(tmp_path):
    proc = _run(["bash", str(SCRIPT), "--smoke", str(tmp_path)], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in STAGES}
    assert all(r["status"] == "ok" for r in results.values()), results
    assert {r["op"] for r in results["kernels"]["rows"]} == {"dyt", "derf", "rmsnorm"}
    rows = {r["name"]: r for r in results["train"]["rows"]}
    assert set(rows) == {"hf eager", "dyt compiled", "rmsnorm eager"}
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] for r in rows.values()), rows
    assert rows["dyt compiled"]["vs_hf_eager"] > 0 and rows["rmsnorm eager"]["vs_hf_eager"] > 0
    compiled = rows["dyt compiled"]["compile"]
    assert compiled["compile/layers"] == 4 and compiled["compile/graph_breaks"] == 0, compiled
    profile = results["profile"]["runs"][0]
    assert profile["norm"] == "dyt" and len(profile["top"]) > 5
    assert any("CompiledFxGraph" in t["op"] for t in profile["top"]), profile["top"]
    memory = results["memory"]["rows"]
    assert [r["name"] for r in memory] == ["dyt compiled", "rmsnorm eager"]
    assert all(r["predicted_total_gb"] > 0 for r in memory)
    assert results["gpu-tests"]["counts"].get("SKIPPED", 0) > 0  # no CUDA here
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"## {name}" in summary for name in STAGES)
    assert (tmp_path / "gpu-check.log").stat().st_size > 0
