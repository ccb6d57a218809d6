"""Checkpoints under run.dir/checkpoints/: DeepSpeed's shards plus our manifest and `latest`.

DeepSpeed writes model, optimizer (ZeRO partitions) and client state into `step_NNNNNNN/`; each
rank adds its RNG states. Only when every rank has finished does rank 0 write `manifest.json`
(file sizes and sha256) and then replace `latest` atomically, so a crash mid-save leaves
`latest` on the previous complete checkpoint. Loading verifies the manifest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import random as tp_random

from megadyt.errors import MegadytError

LATEST = "latest"
MANIFEST = "manifest.json"


def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _rng_state() -> dict:
    """Every generator's state as tensors and tuples, so it loads with weights_only=True."""
    tracker = tp_random.get_cuda_rng_tracker()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (
            np_name,
            torch.from_numpy(np_keys.astype(np.int64)),
            np_pos,
            np_has_gauss,
            np_gauss,
        ),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": dict(tracker.get_states()),
    }


def _set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss)
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tp_random.get_cuda_rng_tracker().set_states(state["tracker"])


def save_checkpoint(
    engine, ckpt_dir: Path, step: int, client_state: dict, before_publish=None
) -> Path:
    """Save a complete checkpoint for `step` (all ranks call this), then publish it.

    `before_publish(tag_dir)` runs on every rank after DeepSpeed's files are written and before
    the manifest, so whatever it writes is covered by the checksums."""
    tag = tag_for(step)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    rank = dist.get_rank()
    rng_path = ckpt_dir / tag / f"rng_rank{rank:05d}.pt"
    torch.save(_rng_state(), rng_path.with_suffix(".tmp"))
    os.replace(rng_path.with_suffix(".tmp"), rng_path)
    if before_publish is not None:
        before_publish(ckpt_dir / tag)
    dist.barrier()
    if rank == 0:
        files = sorted(p for p in (ckpt_dir / tag).rglob("*") if p.is_file() and p.name != MANIFEST)
        manifest = {
            "step": step,
            "world_size": dist.get_world_size(),
            "files": {
                str(p.relative_to(ckpt_dir / tag)): {
                    "bytes": p.stat().st_size,
                    "sha256": _sha256(p),
                }
                for p in files
            },
        }
        atomic_write_text(ckpt_dir / tag / MANIFEST, json.dumps(manifest, indent=1))
        atomic_write_text(ckpt_dir / LATEST, tag)
    dist.barrier()
    return ckpt_dir / tag


def latest_tag(ckpt_dir: Path) -> str | None:
    path = ckpt_dir / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag or None


def verify_checkpoint(ckpt_dir: Path, tag: str) -> dict:
    """Check sizes and checksums against the manifest; raise naming the first bad file."""
    manifest_path = ckpt_dir / tag / MANIFEST
    if not manifest_path.is_file():
        raise MegadytError(
            f"checkpoint {ckpt_dir / tag} has no {MANIFEST}: it is incomplete; delete it or "
            f"point {ckpt_dir / LATEST} at an earlier step"
        )
    manifest = json.loads(manifest_path.read_text())
    for rel, meta in manifest["files"].items():
        path = ckpt_dir / tag / rel
        if not path.is_file() or path.stat().st_size != meta["bytes"]:
            raise MegadytError(
                f"checkpoint file {path} is missing or truncated; restore it or "
                "resume from an earlier checkpoint"
            )
        if _sha256(path) != meta["sha256"]:
            raise MegadytError(
                f"checkpoint file {path} fails its checksum (corrupted or "
                "modified); restore it or resume from an earlier checkpoint"
            )
    return manifest


def load_checkpoint(engine, ckpt_dir: Path) -> dict | None:
    """Resume from `latest` if there is one; returns the client state (None: fresh start)."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None
    manifest = verify_checkpoint(ckpt_dir, tag) if dist.get_rank() == 0 else None
    world = [manifest]
    dist.broadcast_object_list(world, src=0)
    if world[0]["world_size"] != dist.get_world_size() and engine.zero_optimization_stage() > 0:
        # DeepSpeed can reshape ZeRO states only through its universal-checkpoint tooling
        raise MegadytError(
            f"checkpoint {ckpt_dir / tag} was saved by {world[0]['world_size']} ranks, this run "
            f"has {dist.get_world_size()}; resume with the same layout"
        )
    load_path, client_state = engine.load_checkpoint(
        str(ckpt_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise MegadytError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    rng_path = ckpt_dir / tag / f"rng_rank{dist.get_rank():05d}.pt"
    if rng_path.is_file():
        _set_rng_state(torch.load(rng_path, weights_only=True))
    return client_state
