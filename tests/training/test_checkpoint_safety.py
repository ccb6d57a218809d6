"""Checkpoints are verified on load and never published half-written.

Real DeepSpeed checkpoints from a 1-process run: a truncated or tampered file is refused with its
name; `--resume-fallback` resumes from the previous complete checkpoint and continues exactly; a
save that hits ENOSPC (torch.save patched to raise, as a full disk does) leaves `latest` on the
previous checkpoint and either stops the run or, when configured, lets it continue.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers import train_small

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
    stale = victim.parent / "stale_from_another_layout.pt"  # e.g. a rank that no longer exists
    stale.write_bytes(b"old")

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
    # step 6 was saved afresh: nothing of the refused one is left in it or its manifest
    manifest = json.loads((victim.parent / "manifest.json").read_text())
    assert not stale.exists() and stale.name not in manifest["files"]


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


# -- a real full disk ------------------------------------------------------------------------------
@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A real small filesystem (root can mount tmpfs; CI runs as root)."""
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI has it)")
@pytest.mark.parametrize("policy", ["stop", "warn"])
def test_real_full_disk_fails_the_save_cleanly(tmp_path, policy):
    """torch's writer raises RuntimeError, not OSError, when the disk fills: still a failed
    save with one line naming the directory and the free space, no partial checkpoint left."""
    with _tmpfs(tmp_path / "small", "600k") as disk:
        run = disk / "run"
        result = run_distributed(
            _run,
            world_size=1,
            overrides=[f"run.dir={run}", "train.steps=6", f"train.on_save_error={policy}"],
        )[0]
        leftovers = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
        latest = (run / "checkpoints" / "latest").exists()
    assert leftovers == [] and not latest  # nothing that looks like a checkpoint
    if policy == "stop":
        assert result["type"] == "CheckpointSaveError", result
        error = result["error"]
        assert "checkpoint save at step 3 failed" in error and "MiB free there" in error
        assert str(run / "checkpoints") in error and "\n" not in error
    else:
        assert sorted(result["losses"]) == list(range(1, 7))  # trained on past both failures


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI has it)")
def test_full_disk_at_start_is_one_line(tmp_path):
    with _tmpfs(tmp_path / "tiny", "4k") as disk:
        with contextlib.suppress(OSError):
            (disk / "filler").write_bytes(b"x" * 65536)  # fills the 4 KiB filesystem
        result = run_distributed(_run, world_size=1, overrides=[f"run.dir={disk / 'run'}"])[0]
    assert result["type"] == "MegadytError", result
    # the run lock is the first file a start writes
    assert result["error"].startswith(f"cannot write the run lock {disk / 'run' / 'lock'}")
    assert "No space left on device" in result["error"]
    assert "\n" not in result["error"]
