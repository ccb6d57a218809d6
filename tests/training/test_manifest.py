"""Checkpoint manifests hashed and verified by all ranks (megadyt.training.checkpoint.manifest): two
ranks write one manifest that covers every file, and a damaged file of either rank is refused by
name on every rank."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import train_small

from megadyt.parallel.testing import run_distributed
from megadyt.training.checkpoint.manifest import MANIFEST_FORMAT, digest_of, shares
from megadyt.training.run.layout import RunDir, manifest_file

SHARDS = ("zero_pp_rank_0_", "zero_pp_rank_1_")  # rank 0's and rank 1's optimizer states


def _damaged_copies(run_dir: Path) -> list[tuple[Path, Path]]:
    """(copy of the run, its truncated file) for one file written by each rank."""
    run = RunDir(run_dir)
    out = []
    for shard in SHARDS:
        copy = run_dir.parent / shard
        shutil.copytree(run_dir, copy)
        step_dir = copy / run.tag_dir(run.latest_tag()).relative_to(run_dir)
        victim = next(p for p in step_dir.iterdir() if shard in p.name)
        with open(victim, "r+b") as handle:
            handle.truncate(victim.stat().st_size // 2)
        out.append((copy, victim))
    return out


def _save_then_verify(rank: int, world_size: int, run_dir: str):
    """Train DP=2 ZeRO-1 for 2 steps (saving at 2); then every rank verifies a copy of the run
    with one truncated file of rank 0 and one of rank 1 (one process spawn for the module)."""
    import torch.distributed as dist

    from megadyt.parallel.distributed import init_distributed
    from megadyt.training.checkpoint.store import choose_checkpoint

    overrides = [f"run.dir={run_dir}", "parallel.zero_stage=1", "train.steps=2"]
    train_small([*overrides, "train.save_interval=2"])
    init_distributed(tp=1)
    copies = _damaged_copies(Path(run_dir)) if rank == 0 else None
    box = [copies]
    dist.broadcast_object_list(box, src=0)
    return [(victim, choose_checkpoint(RunDir(copy), fallback=False)) for copy, victim in box[0]]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(the run's step-2 checkpoint dir, each rank's verdicts on the damaged copies)."""
    run_dir = tmp_path_factory.mktemp("manifest") / "run"
    verdicts = run_distributed(_save_then_verify, world_size=2, run_dir=str(run_dir))
    run = RunDir(run_dir)
    return run.tag_dir(run.latest_tag()), verdicts


def test_two_ranks_write_one_manifest_covering_every_file(saved):
    tag_dir, _ = saved
    manifest = json.loads(manifest_file(tag_dir).read_text())
    assert (manifest["format"], manifest["hash"], manifest["world_size"]) == (
        MANIFEST_FORMAT,
        "blake3",
        2,
    )
    on_disk = {
        str(p.relative_to(tag_dir)): p
        for p in tag_dir.rglob("*")
        if p.is_file() and p != manifest_file(tag_dir)
    }
    assert set(manifest["files"]) == set(on_disk)
    for rel, path in on_disk.items():
        assert manifest["files"][rel] == {"bytes": path.stat().st_size, "blake3": digest_of(path)}
    names = " ".join(on_disk)
    assert "zero_pp_rank_0" in names and "zero_pp_rank_1" in names  # both ranks' shards
    assert "rng_rank00000.pt" in names and "rng_rank00001.pt" in names


def test_a_truncated_file_of_either_rank_is_refused_by_name(saved):
    _, verdicts = saved
    assert verdicts[0] == verdicts[1]  # every rank agrees
    assert len(verdicts[0]) == len(SHARDS)
    for victim, (tag, error, _) in verdicts[0]:
        assert tag is None and f"{victim} is missing or truncated" in error


def test_shares_split_bytes_evenly_and_the_same_way_everywhere():
    sizes = {"a": 10, "b": 9, "c": 4, "d": 3, "e": 2, "f": 1}
    split = shares(sizes, 2)
    assert sorted(sum(split, [])) == sorted(sizes)  # every file once
    loads = [sum(sizes[r] for r in part) for part in split]
    assert max(loads) - min(loads) <= max(sizes.values())
    assert split == shares(dict(reversed(sizes.items())), 2)  # order-independent
    assert shares(sizes, 1) == [sorted(sizes, key=lambda r: -sizes[r])]


def test_a_format_1_manifest_is_still_verified(tmp_path):
    """Checkpoints written before format 2 (sha256, no "format"/"hash") stay readable, and a
    changed file in one is still caught."""
    import hashlib

    from megadyt.errors import MegadytError
    from megadyt.training.checkpoint.store import verify_checkpoint

    (tmp_path / "weights").mkdir()
    data = tmp_path / "weights" / "tp_rank_00.pt"
    data.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    files = {"weights/tp_rank_00.pt": {"bytes": 7, "sha256": sha}}
    manifest_file(tmp_path).write_text(json.dumps({"step": 1, "world_size": 1, "files": files}))
    assert verify_checkpoint(tmp_path)["hash"] == "sha256"
    data.write_bytes(b"weightz")
    with pytest.raises(MegadytError, match="fails its checksum"):
        verify_checkpoint(tmp_path, only="weights")
