"""benchmarks/gpu_check.sh is ready before a GPU is: its dry run passes here, and a failing
stage never stops the stages after it."""

from __future__ import annotations

import shutil
import subprocess

from helpers import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STAGES = [
    "install",
    "gpu-tests",
    "norms",
    "appendix-c",
    "train-100m",
    "train-1b",
    "plan-memory",
]
BUDGET_S = 8 * 60  # the whole check must fit a short GPU loan with time to rerun it


def _run(script, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_dry_run_lists_every_stage_within_the_budget_and_finds_every_script():
    proc = _run(SCRIPT, "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] != ["dry"]]
    assert [r[0] for r in rows] == STAGES
    limits = [int(r[1].rstrip("s")) for r in rows]
    assert sum(limits) <= BUDGET_S, limits
    assert "every stage's scripts and tools exist" in proc.stdout


def test_dry_run_names_a_missing_script(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    copy = tmp_path / "benchmarks" / SCRIPT.name
    shutil.copy(SCRIPT, copy)
    proc = _run(copy, "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2
    assert "missing: benchmarks/norms.py" in proc.stderr
    assert "missing: benchmarks/gpu_install.sh" in proc.stderr


def test_a_failing_stage_does_not_stop_the_others(tmp_path):
    """A copy of the script with none of its stage scripts: every stage fails at once, and
    each is still run, recorded and summarised; the exit status says the check failed."""
    (tmp_path / "benchmarks").mkdir()
    copy = tmp_path / "benchmarks" / SCRIPT.name
    shutil.copy(SCRIPT, copy)
    out = tmp_path / "out"
    proc = _run(copy, str(out), cwd=tmp_path)
    assert proc.returncode != 0
    rows = [line.split("\t") for line in (out / "stages.tsv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == STAGES
    assert all(r[1].startswith("failed (exit") for r in rows), rows
    summary = (out / "summary.md").read_text()
    assert all(f"| {stage} | failed" in summary for stage in STAGES)
    assert (out / "gpu-check.log").stat().st_size > 0


def test_unknown_option_is_one_line_and_exit_2():
    proc = _run(SCRIPT, "--fast")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--fast" in proc.stderr
