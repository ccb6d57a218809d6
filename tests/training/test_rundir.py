"""The run directory's layout has one owner: names, the step-tag format and its parser."""

from __future__ import annotations

import pytest

from megadyt.errors import MegadytError
from megadyt.training.run.layout import (
    RunDir,
    checkpoint_step,
    resolve_checkpoint,
    step_of,
    tag_for,
    task_set_label,
    weights_file,
)


@pytest.mark.parametrize("step", [0, 1, 9, 42, 999_999, 9_999_999, 10_000_000, 123_456_789])
def test_step_tag_round_trip(step):
    tag = tag_for(step)
    assert step_of(tag) == step
    assert len(tag) >= len("step_0000000")
    # tags of up to 7 digits sort like their steps, so `ls` shows checkpoints in order
    if step + 1 < 10_000_000:
        assert (tag < tag_for(step + 1)) and tag.startswith("step_")


@pytest.mark.parametrize(
    "name", ["step_12", "step_", "latest", "step_0000012.json", "xstep_0000012", "step_-000001"]
)
def test_step_of_refuses_what_tag_for_never_writes(name):
    assert step_of(name) is None


def test_negative_step_has_no_tag():
    with pytest.raises(ValueError):
        tag_for(-1)


def _checkpoint(run: RunDir, step: int, complete: bool = True):
    tag_dir = run.tag_dir(tag_for(step))
    weights_file(tag_dir, 0).parent.mkdir(parents=True)
    weights_file(tag_dir, 0).write_bytes(b"w")
    if complete:
        (tag_dir / "manifest.json").write_text("{}")
    return tag_dir


def test_latest_is_published_and_read_back(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.latest_tag() is None
    _checkpoint(run, 4)
    run.publish_latest(tag_for(4))
    assert run.latest_tag() == "step_0000004"
    assert run.latest_file.read_text() == "step_0000004"
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["latest", "step_0000004"]


def test_complete_tags_newest_first_and_only_with_a_manifest(tmp_path):
    run = RunDir(tmp_path)
    for step in (3, 12, 6):
        _checkpoint(run, step)
    _checkpoint(run, 9, complete=False)
    (run.checkpoints / "step_junk").mkdir()
    assert run.complete_tags() == [tag_for(12), tag_for(6), tag_for(3)]


@pytest.mark.parametrize("given", ["run", "checkpoints", "step"])
def test_resolve_checkpoint_accepts_run_checkpoints_or_step_dir(tmp_path, given):
    run = RunDir(tmp_path / "run")
    _checkpoint(run, 3)
    newest = _checkpoint(run, 6)
    run.publish_latest(tag_for(6))
    path = {"run": run.root, "checkpoints": run.checkpoints, "step": newest}[given]
    assert resolve_checkpoint(path) == newest
    assert checkpoint_step(resolve_checkpoint(path)) == 6


def test_resolve_checkpoint_names_the_path_when_there_is_none(tmp_path):
    with pytest.raises(MegadytError, match=str(tmp_path)):
        resolve_checkpoint(tmp_path)


def test_eval_results_are_named_by_step_and_task_set(tmp_path):
    run = RunDir(tmp_path)
    assert run.eval_results() == []
    assert task_set_label(["paper15"]) == "paper15"
    assert task_set_label(["arc_easy", "piqa,hellaswag"]) == "arc_easy+piqa+hellaswag"
    many = task_set_label([f"task_number_{i}" for i in range(12)])
    assert len(many) <= 60 and many.startswith("task_number_0+11more-")
    assert many != task_set_label([f"task_number_{i}" for i in range(13)])
    for step, task_set in ((0, "offline"), (8, "paper15"), (10_000_000, "offline"), (8, "a+b")):
        run.eval_json(step, task_set).parent.mkdir(exist_ok=True)
        run.eval_json(step, task_set).write_text("{}")
    (run.root / "eval" / "step_notes.json").write_text("{}")
    (run.root / "eval" / "step_0000030.json").write_text("{}")  # named without a task set
    found = [(step, task_set, path.name) for step, task_set, path in run.eval_results()]
    assert found == [
        (0, "offline", "step_0000000-offline.json"),
        (8, "a+b", "step_0000008-a+b.json"),
        (8, "paper15", "step_0000008-paper15.json"),
        (30, "", "step_0000030.json"),
        (10_000_000, "offline", "step_10000000-offline.json"),
    ]


def test_the_final_table_is_missing_only_once_the_run_is_complete(tmp_path):
    run = RunDir(tmp_path)
    assert run.missing_final_table(10, []) is None  # no final tasks
    assert run.missing_final_table(10, ["paper15"]) is None  # nothing trained
    run.checkpoints.mkdir()
    run.publish_latest("step_0000008")
    assert run.remaining_steps(10) == 2 and run.missing_final_table(10, ["paper15"]) is None
    run.publish_latest("step_0000010")
    table = run.missing_final_table(10, ["paper15"])
    assert run.remaining_steps(10) == 0 and table == run.eval_json(10, "paper15")
    table.parent.mkdir()
    table.write_text("{}")
    assert run.missing_final_table(10, ["paper15"]) is None
    assert run.missing_final_table(10, ["offline"]) == run.eval_json(10, "offline")


def test_config_copy_round_trips(tmp_path):
    run = RunDir(tmp_path / "new")
    assert run.read_config() == {}
    config = {"model": {"norm": "dyt", "hidden_size": 128}, "train": {"lr": 0.003}}
    run.write_config(config)
    assert run.read_config() == config
    assert not list(run.root.glob("*.tmp*"))  # written atomically, nothing left beside it


def test_resume_fallback_orders_checkpoints_by_step_not_by_name(tmp_path):
    """Past step 9,999,999 the tags grow a digit: 'step_9999000' > 'step_10000000' as text."""
    from megadyt.training.checkpoint.store import choose_checkpoint

    run = RunDir(tmp_path)
    for step in (9_998_000, 9_999_000):
        tag_dir = _checkpoint(run, step)
        (tag_dir / "manifest.json").write_text('{"files": {}}')
    _checkpoint(run, 10_000_000, complete=False)  # the newest has no manifest: incomplete
    run.publish_latest(tag_for(10_000_000))
    tag, error, note = choose_checkpoint(run, fallback=True)
    assert error is None and tag == tag_for(9_999_000)
    assert "falling back" in note
    assert choose_checkpoint(run, fallback=False)[0] is None
