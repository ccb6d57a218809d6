"""Checkpoints are verified on load and never published half-written.

Real DeepSpeed checkpoints from a 1-process run: a truncated or tampered file is refused with its
name; `--resume-fallback` resumes from the previous complete checkpoint and continues exactly; a
save that hits ENOSPC (torch.save patched to raise, as a full disk does) leaves `latest` on the
previous checkpoint and either stops the run or, when configured, lets it continue.
"""

from __future__ import annotations

import errno

import pytest
from conftest import train_small

from megadyt.parallel.testing import run_distributed

pytestmark = pytest.mark.multiprocess

SAVE_EVERY_3 = ["train.save_interval=3", "parallel.zero_stage=1"]


def _run(rank: int, world_size: int, overrides: list[str], fail_save_of: str | None = None):
    import torch

    from megadyt.errors import MegadytError

    if fail_save_of:
        real_save = torch.save

        def full_disk_save(obj, f, *args, **kwargs):
            if fail_save_of in str(f):
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
            return real_save(obj, f, *args, **kwargs)

        torch.save = full_disk_save
    try:
        result = train_small([*SAVE_EVERY_3, *overrides])
        return {"first": result.first_step, "losses": result.losses}
    except MegadytError as exc:
        return {"error": str(exc), "type": type(exc).__name__}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step run with complete checkpoints at steps 3 and 6, and its losses."""
    run_dir = tmp_path_factory.mktemp("ckpt")
    result = run_distributed(_run, world_size=1, overrides=[f"run.dir={run_dir}", "train.steps=6"])
    return run_dir, result[0]["losses"]


def _copy(run_dir, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target


def test_truncated_checkpoint_is_refused_then_fallback_resumes_exactly(trained, tmp_path):
    run_dir, losses = trained
    run = _copy(run_dir, tmp_path)
    victim = run / "checkpoints" / "step_0000006" / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:100])

    refused = run_distributed(_run, world_size=1, overrides=[f"run.dir={run}", "train.steps=6"])[0]
    assert "mp_rank_00_model_states.pt" in refused["error"]
    assert "truncated" in refused["error"] and "--resume-fallback" in refused["error"]
    assert "\n" not in refused["error"]

    resumed = run_distributed(
        _run,
        world_size=1,
        overrides=[f"run.dir={run}", "train.steps=6", "train.resume_fallback=true"],
    )[0]
    assert resumed["first"] == 3
    for step in (4, 5, 6):
        assert resumed["losses"][step] == losses[step]


def test_tampered_checkpoint_fails_its_checksum(trained, tmp_path):
    run_dir, _ = trained
    run = _copy(run_dir, tmp_path)
    victim = run / "checkpoints" / "step_0000006" / "rng_rank00000.pt"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    victim.write_bytes(bytes(data))
    refused = run_distributed(_run, world_size=1, overrides=[f"run.dir={run}", "train.steps=6"])[0]
    assert "rng_rank00000.pt" in refused["error"] and "checksum" in refused["error"]


@pytest.mark.parametrize("policy", ["stop", "warn"])
def test_disk_full_save_keeps_previous_checkpoint(tmp_path, policy):
    result = run_distributed(
        _run,
        world_size=1,
        fail_save_of="step_0000006",
        overrides=[f"run.dir={tmp_path}", "train.steps=9", f"train.on_save_error={policy}"],
    )[0]
    ckpt = tmp_path / "checkpoints"
    assert not (ckpt / "step_0000006").exists()  # the partial save was removed
    if policy == "stop":
        assert result["type"] == "CheckpointSaveError"
        assert "No space left on device" in result["error"] and "step_0000003" in result["error"]
        assert (ckpt / "latest").read_text() == "step_0000003"
    else:
        assert sorted(result["losses"]) == list(range(1, 10))
        assert (ckpt / "latest").read_text() == "step_0000009"


def test_checkpoint_of_another_model_is_refused(trained, tmp_path):
    run_dir, _ = trained
    run = _copy(run_dir, tmp_path)
    refused = run_distributed(
        _run, world_size=1, overrides=[f"run.dir={run}", "train.steps=9", "model.norm=rmsnorm"]
    )[0]
    assert "model.norm='dyt' there vs 'rmsnorm' here" in refused["error"], refused
