"""Checkpoint retention: train.keep_checkpoints / train.keep_every delete old checkpoints.

The policy is checked as a pure function; the file work on a hand-made run dir; then a real
2-process training saving every step keeps exactly the newest K plus the milestones, resumes
over the leftovers of a simulated crash in the middle of a deletion from `latest`, and ends with
the leftovers gone (one run serves both tests, to keep the file fast).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from helpers import TokenSource, small_config

from megadyt.config import load_config
from megadyt.errors import ConfigError
from megadyt.parallel.testing import run_distributed
from megadyt.training.checkpoint.retention import Retention, prune, steps_to_keep
from megadyt.training.checkpoint.store import choose_checkpoint
from megadyt.training.run.layout import RunDir, manifest_file, step_of, tag_for

pytestmark = pytest.mark.multiprocess

EVERY_STEP = ["train.save_interval=1", "train.steps=7", "parallel.zero_stage=1"]
KEEP_2_EVERY_3 = ["train.keep_checkpoints=2", "train.keep_every=3"]


@pytest.mark.parametrize(
    ("complete", "latest", "keep_last", "keep_every", "kept"),
    [
        ([1, 2, 3, 4, 5], 5, None, None, {1, 2, 3, 4, 5}),  # the default keeps all
        ([1, 2, 3, 4, 5], 5, None, 2, {1, 2, 3, 4, 5}),  # milestones alone delete nothing
        ([1, 2, 3, 4, 5, 6, 7], 7, 2, 3, {3, 6, 7}),  # newest 2, and the multiples of 3
        ([1, 2, 3], 3, 1, None, {3}),
        ([10, 20, 30, 40], 40, 1, 20, {20, 40}),
        # latest and everything newer stay, though the newest K would be 9 only
        ([4, 5, 8, 9], 5, 1, None, {5, 8, 9}),
        # a `latest` without manifest: the K before it stay (what --resume-fallback needs)
        ([2, 3, 4], 5, 2, None, {3, 4}),
    ],
)
def test_policy_keeps_newest_milestones_latest_and_newer(
    complete, latest, keep_last, keep_every, kept
):
    assert steps_to_keep(complete, latest, keep_last, keep_every) == kept


def _fake_checkpoint(run: RunDir, step: int, complete: bool = True) -> Path:
    tag_dir = run.tag_dir(tag_for(step))
    tag_dir.mkdir(parents=True)
    (tag_dir / "model.pt").write_bytes(b"weights")
    if complete:  # a manifest that lists no files verifies
        manifest_file(tag_dir).write_text(json.dumps({"step": step, "files": {}}))
    return tag_dir


def test_pass_deletes_old_and_partial_dirs_never_latest_or_newer(tmp_path, capsys):
    run = RunDir(tmp_path)
    for step in (1, 2, 3, 5, 6):
        _fake_checkpoint(run, step)
    _fake_checkpoint(run, 4, complete=False)  # left by a crashed save: deleted
    _fake_checkpoint(run, 7, complete=False)  # maybe being written: kept
    _fake_checkpoint(run, 8)  # newer than latest (an earlier branch): kept
    run.publish_latest(tag_for(6))

    deleted = prune(run, Retention(keep_last=2, keep_every=2))

    assert [step_of(p.name) for p in run.step_dirs()] == [2, 5, 6, 7, 8]
    assert deleted == ["step_0000001", "step_0000003", "step_0000004 (incomplete)"]
    assert run.trash_dirs() == []
    line = capsys.readouterr().out.strip()
    assert line == (
        "retention: deleted step_0000001, step_0000003, step_0000004 (incomplete) "
        "(train.keep_checkpoints=2, train.keep_every=2)"
    )
    assert prune(run, Retention(keep_last=2, keep_every=2)) == []
    assert capsys.readouterr().out == ""  # nothing deleted: nothing printed


def test_trash_is_never_a_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    _fake_checkpoint(run, 2)
    trash = _fake_checkpoint(run, 4)
    trash.rename(run.trash_dir(trash.name))  # complete-looking, mid-deletion
    _fake_checkpoint(run, 5, complete=False)
    run.publish_latest(tag_for(5))  # damaged: --resume-fallback looks for an earlier one

    assert run.complete_tags() == ["step_0000002"]
    assert choose_checkpoint(run, fallback=True)[0] == "step_0000002"


def _tags(run_dir: str) -> list[int]:
    return [step_of(p.name) for p in RunDir(run_dir).step_dirs()]


def _train(run_dir: str, seen: dict, *extra: str):
    """train_small saving every step, with a hook listing the step dirs after each publish."""
    from megatron.core import parallel_state

    from megadyt.training.trainer import train

    cfg = small_config([*EVERY_STEP, *KEEP_2_EVERY_3, f"run.dir={run_dir}", *extra])
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    data = (TokenSource(cfg.train.steps * 8, 32, 0), TokenSource(8, 32, 1))
    return train(cfg, data, after_publish=lambda run, step: seen.update({step: _tags(run.root)}))


def _crash_mid_deletion(run: RunDir) -> None:
    """What crashes leave: step 4 lost its manifest (deletion step 1), and a copy of step 5 was
    half deleted under a trash name (its manifest still there)."""
    manifest_file(run.tag_dir(tag_for(4))).unlink()
    trash = run.trash_dir(tag_for(2))
    shutil.copytree(run.tag_dir(tag_for(5)), trash)
    next(p for p in sorted(trash.rglob("*.pt"))).unlink()


def _legs(rank: int, world_size: int, run_dir: str) -> dict:
    """Steps 1-5 (train.stop_at_step), a simulated crash mid-deletion, then steps 6-7."""
    import torch.distributed as dist

    run, seen, printed = RunDir(run_dir), {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        _train(run_dir, seen, "train.stop_at_step=5")
        if rank == 0:
            _crash_mid_deletion(run)
        dist.barrier()
        out = {"complete": run.complete_tags(), "choice": choose_checkpoint(run, fallback=True)}
        second = _train(run_dir, seen)
    out.update(seen=seen, resumed_at=second.first_step, last=second.last_step)
    out["printed"] = [x for x in printed.getvalue().splitlines() if x.startswith("retention:")]
    return out


@pytest.fixture(scope="module")
def legs(tmp_path_factory):
    """Both ranks' observations of one 2-process run (each leg is a real DeepSpeed training)."""
    run_dir = tmp_path_factory.mktemp("retention") / "run"
    return RunDir(run_dir), run_distributed(_legs, world_size=2, run_dir=str(run_dir))


def test_training_keeps_the_newest_two_and_the_multiples_of_three(legs):
    run, (out, other) = legs
    # rank 1's hook runs after rank 0's retention pass (the barrier): both see the same
    assert (
        other["seen"]
        == out["seen"]
        == {
            1: [1],
            2: [1, 2],
            3: [2, 3],
            4: [3, 4],
            5: [3, 4, 5],
            6: [3, 5, 6],
            7: [3, 6, 7],
        }
    )
    assert run.complete_tags() == ["step_0000007", "step_0000006", "step_0000003"]
    assert run.latest_tag() == "step_0000007"
    assert _tags(run.root) == [3, 6, 7] and run.trash_dirs() == []


def test_crash_mid_deletion_resumes_from_latest_and_is_cleaned_up(legs):
    run, (out, other) = legs
    # the leftovers are not checkpoints: resume loads `latest`
    assert out["complete"] == ["step_0000005", "step_0000003"]
    assert out["choice"] == ("step_0000005", None, None)
    assert (out["resumed_at"], out["last"]) == (5, 7)
    # the first pass of the resumed run removes them; rank 0 alone deletes and reports
    assert out["printed"][-2:] == [
        "retention: deleted leftover .deleting-step_0000002, step_0000004 (incomplete) "
        "(train.keep_checkpoints=2, train.keep_every=3)",
        "retention: deleted step_0000005 (train.keep_checkpoints=2, train.keep_every=3)",
    ]
    assert other["printed"] == []
    assert run.trash_dirs() == [] and not run.tag_dir(tag_for(4)).exists()


@pytest.mark.parametrize("key", ["keep_checkpoints", "keep_every"])
@pytest.mark.parametrize("value", [0, -3])
def test_retention_keys_must_be_at_least_one(key, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"train.{key}={value}"])
    message = str(info.value)
    assert f"train.{key}" in message and str(value) in message and "\n" not in message
    assert load_config(None, [f"train.{key}=4"]).train.__dict__[key] == 4
    assert load_config(None, []).train.__dict__[key] is None
