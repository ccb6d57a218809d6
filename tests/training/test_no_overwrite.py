"""A start never trains over a run's checkpoints, a finished run is not re-entered, and a refused
start leaves nothing behind (issue #29, items 1, 5 and 10).

One small run (10 steps, checkpoints at 5 and 10) is trained in this process; each test works
on a copy of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import TokenSource, metrics_records, small_config, train_small

from megadyt.errors import MegadytError
from megadyt.training.run.layout import RunDir, manifest_file, weights_file

CHECKPOINTS = ["train.save_interval=5"]  # SMALL_TRAINING: 10 steps, so step_0000005 and _10


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = train_small([f"run.dir={run_dir}", *CHECKPOINTS])
    assert result.last_step == 10 and RunDir(run_dir).latest_tag() == "step_0000010"
    return run_dir


def _copy(finished: Path, tmp_path: Path) -> RunDir:
    shutil.copytree(finished, tmp_path / "run")
    return RunDir(tmp_path / "run")


def _rerun(run: RunDir, steps: int = 10):
    return train_small([f"run.dir={run.root}", *CHECKPOINTS, f"train.steps={steps}"])


def _damage(run: RunDir, tag: str) -> None:
    """Flip one byte of the checkpoint's weights: its manifest no longer verifies."""
    path = weights_file(run.tag_dir(tag), 0)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _snapshot(run: RunDir) -> dict[str, bytes]:
    """Every file of the run but the lock (rewritten by each start), by path."""
    return {
        str(p.relative_to(run.root)): p.read_bytes()
        for p in sorted(run.root.rglob("*"))
        if p.is_file() and p != run.lock_file
    }


def test_a_missing_latest_resumes_from_the_newest_checkpoint_that_verifies(
    finished, tmp_path, capsys
):
    """`latest` deleted and step 10 damaged: the run resumes from step 5 (saying so), never
    from scratch; step 5, α and the first start's record stay as they were."""
    run = _copy(finished, tmp_path)
    run.latest_file.unlink()
    _damage(run, "step_0000010")
    kept = {p: run.root.joinpath(p).read_bytes() for p in ("calibration.json",)}
    step5 = manifest_file(run.tag_dir("step_0000005")).read_bytes()
    capsys.readouterr()
    result = _rerun(run)
    out = capsys.readouterr().out
    assert (result.first_step, result.last_step) == (5, 10)
    assert (
        f"megadyt: warning: {run.latest_file} is missing; resuming from step_0000005, the "
        "newest checkpoint that verifies" in out
    ), out
    assert "calibrated α" not in out
    assert run.latest_tag() == "step_0000010"
    assert manifest_file(run.tag_dir("step_0000005")).read_bytes() == step5
    assert all(run.root.joinpath(p).read_bytes() == b for p, b in kept.items())
    starts = [h for h in run.read_history() if h["event"] == "start"]
    assert [s["resumed_step"] for s in starts] == [None, 5]
    steps = [r["step"] for r in metrics_records(run.root) if "loss" in r]
    assert steps == [*range(1, 11), *range(6, 11)]  # steps 1-5 were never trained again


def test_an_empty_latest_is_repaired_and_the_finished_run_stays_finished(
    finished, tmp_path, capsys
):
    run = _copy(finished, tmp_path)
    run.latest_file.write_text("")
    before = _snapshot(run)
    capsys.readouterr()
    result = _rerun(run)
    out = capsys.readouterr().out
    assert f"{run.latest_file} is empty; resuming from step_0000010" in out, out
    assert (result.first_step, result.last_step) == (10, 10)
    assert run.latest_tag() == "step_0000010"
    after = _snapshot(run)
    assert after.pop("checkpoints/latest") == b"step_0000010"
    before.pop("checkpoints/latest")
    assert after == before


def test_checkpoints_of_which_none_verifies_are_refused_by_name(finished, tmp_path):
    run = _copy(finished, tmp_path)
    run.latest_file.unlink()
    for tag in ("step_0000005", "step_0000010"):
        _damage(run, tag)
    before = _snapshot(run)
    with pytest.raises(MegadytError) as info:
        _rerun(run)
    message = str(info.value)
    assert "\n" not in message and f"{run.latest_file} is missing" in message
    assert "step_0000010, step_0000005" in message and "fails its checksum" in message
    assert f"move {run.checkpoints} away" in message
    assert _snapshot(run) == before and not run.latest_file.exists()


def test_rerunning_a_finished_run_says_so_and_writes_nothing(finished, tmp_path, capsys):
    """No history record, no empty TensorBoard events file, no metrics: nothing at all."""
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    capsys.readouterr()
    result = _rerun(run)
    out = capsys.readouterr().out
    assert (result.first_step, result.last_step) == (10, 10)
    assert out.strip() == (
        f"megadyt: run {run.root} is complete: its latest checkpoint is at step 10 and "
        "train.steps is 10; nothing to train"
    )
    assert _snapshot(run) == before


def test_an_imported_run_without_latest_starts_from_its_weights(finished, tmp_path, capsys):
    """`megadyt import-hf`'s step 0 is a checkpoint too: with `latest` gone, training starts
    from the imported weights (no calibration of a fresh model)."""
    from megadyt.model import build_model
    from megadyt.parallel.tp_shards import tp_layout
    from megadyt.training.checkpoint.initial import write_initial_run
    from megadyt.training.checkpoint.weights import load_tp1_weights

    run_dir = tmp_path / "imported"
    cfg = small_config([f"run.dir={run_dir}"])
    _, state = load_tp1_weights(RunDir(finished).tag_dir("step_0000010"))
    tag_dir = write_initial_run(run_dir, cfg, state, tp_layout(build_model(cfg)), {})
    run = RunDir(run_dir)
    run.latest_file.unlink()
    capsys.readouterr()
    result = train_small([f"run.dir={run_dir}", "train.steps=1"], data=_data(1))
    out = capsys.readouterr().out
    assert f"{run.latest_file} is missing; resuming from step_0000000" in out, out
    assert f"starting from the weights in {tag_dir} with a new optimizer" in out, out
    assert result.first_step == 0 and not run.calibration.exists()


def _data(steps: int):
    return TokenSource(steps * 8, 32, 0), TokenSource(8, 32, 1)


def test_a_refused_start_leaves_no_run_directory_behind(tmp_path):
    """A start that fails after taking the run (here: its data is missing) removes the lock
    it created and the directories it created; a directory the user made stays."""
    from megadyt.training.trainer import train

    missing = [f"data.prefixes=[{tmp_path / 'no-such-data'}]"]
    new = tmp_path / "new" / "run"
    with pytest.raises(MegadytError, match="no-such-data"):
        train(small_config([f"run.dir={new}", *missing]))
    assert not (tmp_path / "new").exists()
    made = tmp_path / "made"
    made.mkdir()
    with pytest.raises(MegadytError, match="no-such-data"):
        train(small_config([f"run.dir={made}", *missing]))
    assert made.is_dir() and list(made.iterdir()) == []
