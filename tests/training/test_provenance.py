"""Run provenance (megadyt.training.run.provenance): config.yaml changes only once every check has
passed, history.jsonl records each start and end, and a resume may not silently change the
model or the schedule."""

from __future__ import annotations

import pytest
import yaml
from helpers import TokenSource, metrics_records, small_config, train_small

from megadyt.errors import MegadytError
from megadyt.training.optim import lr_at
from megadyt.training.run.layout import RunDir
from megadyt.training.run.provenance import config_digest


def _train(run_dir, overrides: list[str], allow_config_change: bool = False):
    """(the config, the result) of a small run of 20 batches' worth of data."""
    overrides = [f"run.dir={run_dir}", *overrides]
    data = (TokenSource(160, 32, 0), TokenSource(8, 32, 1))
    result = train_small(overrides, data=data, allow_config_change=allow_config_change)
    return small_config(overrides), result


def test_refused_reruns_leave_the_record_and_an_allowed_change_is_logged(tmp_path):
    run_dir = tmp_path / "run"
    cfg, _ = _train(run_dir, [])
    run = RunDir(run_dir)
    record, history = run.config.read_bytes(), run.history.read_text()
    start, end = run.read_history()
    assert start["event"] == "start" and start["resumed_step"] is None
    assert start["config_digest"] == config_digest(cfg.to_dict()) and start["world_size"] == 1
    assert start["software"]["torch"] and start["config_changes"] == {}
    assert (end["event"], end["step"], end["outcome"]) == ("end", 10, "completed")

    # another model: refused before anything in the run changes
    with pytest.raises(MegadytError, match=r"different model \(model.norm='dyt' there vs"):
        _train(run_dir, ["model.norm=rmsnorm"])
    # another schedule: refused unless allowed
    with pytest.raises(MegadytError, match=r"train.lr=0.003 there vs 0.001 here.*allow-config"):
        _train(run_dir, ["train.lr=1e-3", "train.steps=14"])
    assert run.config.read_bytes() == record and run.history.read_text() == history

    new_cfg, result = _train(run_dir, ["train.lr=1e-3", "train.steps=14"], True)
    assert (result.first_step, result.last_step) == (10, 14)
    assert run.read_config()["train"]["lr"] == 1e-3  # the record now says what runs
    resumed = run.read_history()[2]
    assert resumed["resumed_step"] == 10
    assert resumed["config_changes"] == {"train.steps": [10, 14], "train.lr": [3e-3, 1e-3]}
    # the new schedule applies from the resumed step as if it had always been in force
    lr = {r["step"]: r["lr"] for r in metrics_records(run_dir) if "lr" in r}
    assert lr[11] == pytest.approx(lr_at(10, new_cfg.train))
    assert lr[10] == pytest.approx(lr_at(9, cfg.train))


def test_changes_outside_the_schedule_need_no_permission(tmp_path):
    run_dir = tmp_path / "run"
    _train(run_dir, ["train.steps=6", "train.save_interval=3", "train.stop_at_step=3"])
    _, result = _train(run_dir, ["train.steps=6", "train.log_interval=2", "train.save_interval=3"])
    assert result.last_step == 6
    assert RunDir(run_dir).read_config()["train"]["log_interval"] == 2
    assert [h["event"] for h in RunDir(run_dir).read_history()] == ["start", "end"] * 2


def test_a_checkpoint_that_fails_verification_leaves_the_record(tmp_path):
    """Verification is one of the start-up checks: a refused resume writes nothing."""
    run_dir = tmp_path / "run"
    _train(run_dir, ["train.steps=2", "train.save_interval=2"])
    run = RunDir(run_dir)
    record, history = run.config.read_bytes(), run.history.read_bytes()
    weights = next(run.tag_dir(run.latest_tag()).rglob("tp_rank_00.pt"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MegadytError, match="tp_rank_00.pt"):
        _train(run_dir, ["train.steps=4", "train.save_interval=2"], allow_config_change=True)
    assert run.config.read_bytes() == record and run.history.read_bytes() == history


def test_a_run_recorded_before_a_key_existed_resumes_under_its_default(tmp_path):
    """An upgrade adds config keys; a run begun before had no such key and trained as its
    default does, so it resumes, and only a value other than the default is a change."""
    for name in ("upgraded", "changed"):
        run_dir = tmp_path / name
        _train(run_dir, ["train.steps=6", "train.save_interval=3", "train.stop_at_step=3"])
        config = RunDir(run_dir).config
        recorded = yaml.safe_load(config.read_text())
        del recorded["train"]["norm_scalar_lr_scale"], recorded["model"]["norm_bias"]
        config.write_text(yaml.safe_dump(recorded))
    _, result = _train(tmp_path / "upgraded", ["train.steps=6", "train.save_interval=3"])
    assert (result.first_step, result.last_step) == (3, 6)
    changed = ["train.steps=6", "train.save_interval=3", "train.norm_scalar_lr_scale=0.5"]
    with pytest.raises(MegadytError, match=r"norm_scalar_lr_scale=1.0 there vs 0.5 here"):
        _train(tmp_path / "changed", changed)
