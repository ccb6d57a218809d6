"""`megadyt sweep`: a bad grid is a one-line error before anything trains; a real sweep (CLI
processes on the built-in corpus) skips finished cells and resumes one that was killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, clean_env
from helpers import TINY as TINY_YAML

from megadyt.cli.main import main
from megadyt.errors import MegadytError
from megadyt.experiments.grid import cell_config, cell_name
from megadyt.experiments.runner import CellResult, run_cell
from megadyt.training.run.layout import RunDir

TINY = str(TINY_YAML)


@pytest.mark.parametrize(
    "grid, culprit",
    [
        ("model.alpha0_atention=1,2", "model.alpha0_atention"),  # unknown key
        ("model.alpha0_ffn=1,abc", "model.alpha0_ffn=abc"),  # not a number
        ("model.alpha0_ffn=1,-2", "must be positive"),  # fails validation
        ("model.alpha0_ffn", "section.key=v1,v2"),  # no values
        ("model.alpha0_ffn=1,,2", "no empty ones"),
        ("model.alpha0_ffn=1,1", "listed twice"),
        ("alpha0_ffn=1,2", "section.key"),
        ("train.seed=1,2", "--seeds"),
        ("run.dir=a,b", "own run dir"),
    ],
)
def test_bad_grid_is_one_line_exit_2(capsys, tmp_path, grid, culprit):
    argv = ["sweep", "--config", TINY, "--grid", grid, "--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("megadyt: error:") and "\n" not in err, err
    assert culprit in err, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_same_key_twice_and_bad_seeds(capsys, tmp_path):
    out = str(tmp_path / "out")
    grid = ["--grid", "model.alpha0_ffn=1", "--grid", "model.alpha0_ffn=2"]
    assert main(["sweep", "--config", TINY, *grid, "--output", out]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["sweep", "--config", TINY, "--seeds", "0", "--output", out]) == 2
    assert "--seeds 0" in capsys.readouterr().err


def test_output_of_another_sweep_is_refused(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"config": "/elsewhere.yaml", "overrides": []}))
    argv = ["sweep", "--config", TINY, "--grid", "model.alpha0_ffn=1", "--output", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of /elsewhere.yaml" in err and "another --output" in err
    assert sorted(p.name for p in out.iterdir()) == ["spec.json"]  # nothing trained


def _finished_cell(out: Path, assignment: dict[str, str], *trained_with: str) -> Path:
    """A cell of `out` with a done result, recorded as trained under the planned config plus
    `trained_with` (as `megadyt train` records it)."""
    run_dir = out / cell_name(assignment) / "seed-2023"
    cfg = cell_config(TINY, list(trained_with), assignment, 2023, str(run_dir))
    RunDir(run_dir).write_config(cfg.to_dict())
    result = CellResult(str(run_dir), 2023, assignment, "done", 4.25)
    (run_dir / "result.json").write_text(json.dumps(result.to_dict()))
    return run_dir


def test_a_result_trained_with_another_config_is_refused(capsys, tmp_path):
    """A finished cell is reused only for the config it was trained with: one trained before
    a default or the YAML changed is refused before anything runs. How it was computed (the
    attention implementation) does not count."""
    argv = ["sweep", "--config", TINY, "--grid", "model.alpha0_ffn=1", "--output"]
    assignment = {"model.alpha0_ffn": "1"}
    _finished_cell(tmp_path / "stale", assignment, "model.alpha_calibration_attention=2")
    assert main([*argv, str(tmp_path / "stale")]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a result trained with another config" in err and "\n" not in err, err
    assert "model.alpha_calibration_attention=2.0 there vs 'auto' here" in err, err
    assert not (tmp_path / "stale" / "spec.json").exists()  # refused at planning

    _finished_cell(tmp_path / "same", assignment, "model.attention_impl=local")
    assert main([*argv, str(tmp_path / "same")]) == 0  # nothing to train: the result stands
    summary = json.loads((tmp_path / "same" / "sweep.json").read_text())
    assert "4.25" in json.dumps(summary), summary


SMALL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.ffn_hidden_size=96",
    "model.seq_length=64",
    "train.steps=300",
    "train.micro_batch_size=4",
    "train.global_batch_size=4",
    "train.log_interval=10",
    "train.eval_interval=300",
    "train.eval_iters=1",
    "train.save_interval=5",
    "parallel.zero_stage=0",
    f"data.cache_dir={ROOT / 'data_cache'}",
]
GRID = ["model.alpha_calibration_other=1,2", "model.alpha_calibration_attention=2"]


def _sweep_command(output: Path) -> list[str]:
    args = [a for s in SMALL for a in ("--set", s)] + [a for g in GRID for a in ("--grid", g)]
    return [
        sys.executable,
        "-m",
        "megadyt",
        "sweep",
        "--config",
        TINY,
        *args,
        "--output",
        str(output),
    ]


def _sweep(output: Path) -> str:
    done = subprocess.run(
        _sweep_command(output),
        cwd=ROOT,
        env=clean_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sweep_resumes_a_killed_cell_and_skips_finished_ones(tmp_path):
    out = tmp_path / "sweep"
    first = (
        out / "model.alpha_calibration_other=1__model.alpha_calibration_attention=2" / "seed-2023"
    )
    second = (
        out / "model.alpha_calibration_other=2__model.alpha_calibration_attention=2" / "seed-2023"
    )
    proc = subprocess.Popen(
        _sweep_command(out),
        cwd=ROOT,
        env=clean_env(OMP_NUM_THREADS="1"),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (first / "checkpoints" / "latest").is_file():
            assert proc.poll() is None, f"sweep exited early with {proc.returncode}"
            assert time.monotonic() < deadline, "no checkpoint from the first cell"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its training child
        proc.wait()
    assert not (first / "result.json").exists()
    killed_at = int((first / "checkpoints" / "latest").read_text().strip()[5:])
    assert killed_at < 300

    stdout = _sweep(out)
    assert "[1/2]" in stdout and "already done" not in stdout
    assert f"resumed from {first / 'checkpoints'}" in (first / "train.log").read_text()
    results = {p: json.loads((p / "result.json").read_text()) for p in (first, second)}
    for path, result in results.items():
        assert result["status"] == "done" and result["valid_loss"] > 0, path
        logged = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        final = [r["valid/loss"] for r in logged if r["step"] == 300 and "valid/loss" in r]
        assert final == [result["valid_loss"]], path  # the value the run itself logged

    summary = json.loads((out / "sweep.json").read_text())
    assert [p["losses"] for p in summary["points"]] == [
        [results[first]["valid_loss"]],
        [results[second]["valid_loss"]],
    ]
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.md").is_file()

    logs = {p: (p / "train.log").stat().st_mtime_ns for p in (first, second)}
    again = _sweep(out)
    assert again.count("(already done)") == 2
    assert {p: (p / "train.log").stat().st_mtime_ns for p in (first, second)} == logs


def test_a_cell_stopped_with_a_checkpoint_is_resumed_not_failed(tmp_path, monkeypatch):
    """A stop request makes `megadyt train` save and exit 0 before the last step (as
    train.stop_at_step does here): the cell gets no result, and the next run resumes it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    small = [s for s in SMALL if not s.startswith("train.steps=")]
    run_dir = tmp_path / "cell"
    with pytest.raises(MegadytError, match=r"stopped at step 5 of 10 .* rerun to resume"):
        run_cell(TINY, [*small, "train.steps=10", "train.stop_at_step=5"], {}, 7, run_dir, 10)
    assert not (run_dir / "result.json").exists()
    result, ran = run_cell(TINY, [*small, "train.steps=10"], {}, 7, run_dir, 10)
    assert ran and result.status == "done" and result.valid_loss > 0
    assert f"resumed from {run_dir / 'checkpoints'}" in (run_dir / "train.log").read_text()
