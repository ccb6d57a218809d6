"""`megadyt compare`: curves from two short runs' TensorBoard logs, a table that matches them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT, clean_env, train_tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    base = train_tiny(root / "rms", "rmsnorm")
    # another length and logging interval: aligned by tokens
    other = train_tiny(root / "dyt", "dyt", ["train.steps=6", "train.log_interval=2"])
    return base, other


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _cells(stdout: str, name: str) -> list[str]:
    (row,) = [line for line in stdout.splitlines() if line.startswith(f"| {name} |")]
    return [c.strip() for c in row.strip("|").split("|")]


def test_compare_writes_png_and_a_table_matching_the_event_files(runs, tmp_path):
    base, other = runs
    (other / "eval").mkdir()

    def results(tasks: dict) -> str:
        entries = {t: {"metric": m, "value": v, "metrics": {m: v}} for t, (m, v) in tasks.items()}
        accuracies = [v for m, v in tasks.values() if m == "acc"]
        return json.dumps({"step": 6, "tasks": entries, "average": sum(accuracies) / 2})

    # the newest step's file with the most tasks is the run's table (a smaller set beside it,
    # an older step's paper15 before it)
    paper15 = {"arc_easy": ("acc", 0.375), "piqa": ("acc", 0.25), "ppl": ("bits_per_byte", 1.5)}
    (other / "eval" / "step_0000006-paper15.json").write_text(results(paper15))
    (other / "eval" / "step_0000006-piqa.json").write_text(results({"piqa": ("acc", 0.9)}))
    (other / "eval" / "step_0000002-paper15.json").write_text(results({"piqa": ("acc", 0.1)}))
    out = tmp_path / "cmp.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "megadyt",
            "compare",
            str(base),
            str(other),
            "--output",
            str(out),
            "--smooth",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev_base, ev_other = _events(base), _events(other)
    final = {
        name: (ev["train/loss"][-1][1], ev["valid/loss"][-1][1], ev["train/tokens"][-1][1])
        for name, ev in (("rms", ev_base), ("dyt", ev_other))
    }
    for name, (train, valid, tokens) in final.items():
        cells = _cells(proc.stdout, name)
        assert cells[2] == f"{int(tokens):,}"
        assert float(cells[3]) == pytest.approx(train, abs=1e-4)
        assert float(cells[4]) == pytest.approx(valid, abs=1e-4)
    dyt = _cells(proc.stdout, "dyt")
    assert float(dyt[5]) == pytest.approx(final["dyt"][0] - final["rms"][0], abs=2e-4)
    assert float(dyt[6]) == pytest.approx(final["dyt"][1] - final["rms"][1], abs=2e-4)
    assert dyt[7] == "31.25" and _cells(proc.stdout, "rms")[7] == "–"
    table = proc.stdout.split("\nzero-shot\n", 1)[1].split("\n\n")[0].splitlines()
    assert table[0] == "| task | rms (none) | dyt (paper15, step 6) |"
    assert table[2:] == [
        "| arc_easy | – | 37.50 |",
        "| piqa | – | 25.00 |",
        "| ppl | – | 1.5000 |",
        "| **average** (acc) | – | 31.25 |",
    ]
    assert final["dyt"][2] == 1.5 * final["rms"][2]  # 6 vs 4 steps
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 600 and image.shape[1] >= 800
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_alignment_by_tokens_and_smoothing():
    import numpy as np

    from megadyt.evaluation.curves import difference, smooth

    base = (np.array([0.0, 10, 20, 30]), np.array([4.0, 3, 2, 1]))
    other = (np.array([5.0, 25]), np.array([5.0, 3]))
    x, d = difference(base, other)
    assert x.tolist() == [10, 20] and d.tolist() == pytest.approx([4.5 - 3, 3.5 - 2])
    assert smooth(np.array([1.0, 3, 5, 7]), 2).tolist() == [1, 2, 4, 6]


def test_compare_errors_on_a_dir_without_logs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt", "compare", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert proc.returncode == 2 and "has no tb/" in proc.stderr
