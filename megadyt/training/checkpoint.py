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
import shutil
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
    """Write `path` via a temporary file and rename: readers see the old or the new text."""
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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


class CheckpointSaveError(MegadytError):
    """A save failed on some rank (disk full, unwritable dir); `latest` was not moved."""


def _any_rank(flag: bool) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _device() -> torch.device:
    from megadyt.parallel.distributed import device

    return device()


def _write_manifest(ckpt_dir: Path, tag: str, step: int, model: dict | None) -> None:
    files = sorted(p for p in (ckpt_dir / tag).rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "step": step,
        "world_size": dist.get_world_size(),
        "model": model,
        "files": {
            str(p.relative_to(ckpt_dir / tag)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in files
        },
    }
    atomic_write_text(ckpt_dir / tag / MANIFEST, json.dumps(manifest, indent=1))


def save_checkpoint(
    engine,
    ckpt_dir: Path,
    step: int,
    client_state: dict,
    before_publish=None,
    model: dict | None = None,
) -> Path:
    """Save a complete checkpoint for `step` (all ranks call this), then publish it.

    `before_publish(tag_dir)` runs on every rank after DeepSpeed's files are written and before
    the manifest, so whatever it writes is covered by the checksums. If any rank fails to write,
    nothing is published: the partial directory is removed and `latest` keeps pointing at the
    previous complete checkpoint; CheckpointSaveError is raised on every rank."""
    tag = tag_for(step)
    tag_dir = ckpt_dir / tag
    rank = dist.get_rank()
    error = None
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
        rng_path = tag_dir / f"rng_rank{rank:05d}.pt"
        torch.save(_rng_state(), rng_path.with_suffix(".tmp"))
        os.replace(rng_path.with_suffix(".tmp"), rng_path)
        if before_publish is not None:
            before_publish(tag_dir)
    except OSError as exc:
        error = f"rank {rank}: {exc.strerror or exc} ({getattr(exc, 'filename', None) or tag_dir})"
    failed = _any_rank(error is not None)
    if not failed and rank == 0:
        try:
            _write_manifest(ckpt_dir, tag, step, model)
            atomic_write_text(ckpt_dir / LATEST, tag)
        except OSError as exc:
            error = f"rank 0: {exc.strerror or exc} (writing {tag_dir / MANIFEST})"
    failed = _any_rank(error is not None)
    if failed:
        messages = [None] * dist.get_world_size()
        dist.all_gather_object(messages, error)
        first = next(m for m in messages if m)
        previous = latest_tag(ckpt_dir)
        if rank == 0 and previous != tag:
            shutil.rmtree(tag_dir, ignore_errors=True)
        raise CheckpointSaveError(
            f"checkpoint save at step {step} failed, {first}; {ckpt_dir / LATEST} still points "
            f"at {previous or 'nothing'}: free space or fix the run dir, then rerun to resume"
        )
    dist.barrier()
    return tag_dir


def latest_tag(ckpt_dir: Path) -> str | None:
    path = ckpt_dir / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag or None


def has_checkpoint(ckpt_dir: Path) -> bool:
    """Whether this run will resume (rank 0 looks, every rank gets the same answer)."""
    answer = [latest_tag(ckpt_dir) is not None if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(answer, src=0)
    return bool(answer[0])


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


def _complete_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags that have a manifest, newest first."""
    tags = [p.name for p in ckpt_dir.glob("step_*") if (p / MANIFEST).is_file()]
    return sorted(tags, reverse=True)


def choose_checkpoint(ckpt_dir: Path, fallback: bool) -> tuple[str | None, str | None, str | None]:
    """(tag to load, error if none can be loaded, note about a fallback) -- rank 0's decision."""
    tag = latest_tag(ckpt_dir)
    if tag is None:
        return None, None, None
    try:
        verify_checkpoint(ckpt_dir, tag)
        return tag, None, None
    except MegadytError as exc:
        if not fallback:
            return None, f"{exc} (or rerun with --resume-fallback to use the previous one)", None
        first_error = str(exc)
    for older in _complete_tags(ckpt_dir):
        if older >= tag:
            continue
        try:
            verify_checkpoint(ckpt_dir, older)
        except MegadytError:
            continue
        return older, None, f"{first_error}; falling back to {ckpt_dir / older}"
    return None, f"{first_error}; no earlier complete checkpoint verifies either", None


# How a model is computed, not what it is: free to change between save and resume.
EXECUTION_ONLY_MODEL_KEYS = frozenset({"norm_impl", "attention_impl"})
# How a fresh run chose its starting weights and α: a resume loads both from the checkpoint.
INITIALIZATION_ONLY_MODEL_KEYS = frozenset(
    {"init_std", "alpha_init", "alpha_calibration_attention", "alpha_calibration_other"}
)


def _check_same_model(ckpt_dir: Path, tag: str, saved: dict | None, model: dict | None) -> None:
    """A checkpoint of another model (e.g. DyT loaded into an RMSNorm config) is refused."""
    if not saved or not model:
        return
    free = EXECUTION_ONLY_MODEL_KEYS | INITIALIZATION_ONLY_MODEL_KEYS
    keys = sorted((set(saved) | set(model)) - free)
    differ = [k for k in keys if saved.get(k) != model.get(k)]
    if differ:
        details = ", ".join(
            f"model.{k}={saved.get(k)!r} there vs {model.get(k)!r} here" for k in differ[:3]
        )
        raise MegadytError(
            f"checkpoint {ckpt_dir / tag} is of a different model ({details}); use the config it "
            "was trained with, or a new run.dir"
        )


def load_checkpoint(
    engine, ckpt_dir: Path, fallback: bool = False, model: dict | None = None
) -> dict | None:
    """Resume from `latest` if there is one; returns the client state (None: fresh start).

    Rank 0 verifies the manifest and tells every rank what to load (or the error), so a bad
    checkpoint fails all ranks with the same one-line message instead of hanging the others."""
    decision = [choose_checkpoint(ckpt_dir, fallback) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(decision, src=0)
    tag, error, note = decision[0]
    if error:
        raise MegadytError(error)
    if tag is None:
        return None
    if note and dist.get_rank() == 0:
        print(f"megadyt: warning: {note}", flush=True)
    manifest = json.loads((ckpt_dir / tag / MANIFEST).read_text())
    _check_same_model(ckpt_dir, tag, manifest.get("model"), model)
    if manifest["world_size"] != dist.get_world_size() and engine.zero_optimization_stage() > 0:
        # DeepSpeed can reshape ZeRO states only through its universal-checkpoint tooling
        raise MegadytError(
            f"checkpoint {ckpt_dir / tag} was saved by {manifest['world_size']} ranks, this run "
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
