"""The checkpoint format: DeepSpeed's shards plus our per-rank RNG files and manifest.

DeepSpeed writes model, optimizer (ZeRO partitions) and client state into a step directory; each
rank adds its RNG states. Only when every rank has finished are the files hashed (by all ranks,
`training.checkpoint.manifest`), the manifest written and `latest` replaced atomically, so a crash
mid-save leaves `latest` on the previous complete checkpoint. Loading verifies the manifest first,
again across all ranks. Where the files live is `RunDir`'s business; when to save, and what else
goes in, is the `Checkpointer`'s.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megadyt.atomic import atomic_output
from megadyt.errors import MegadytError
from megadyt.parallel.distributed import first_error, from_rank0
from megadyt.training.checkpoint import reshard
from megadyt.training.checkpoint.manifest import (
    WEIGHTS_ONLY,
    check_files,
    read_manifest,
    verify_shared,
    write_manifest,
)
from megadyt.training.checkpoint.rng import rng_state, set_rng_state
from megadyt.training.run.layout import RunDir, manifest_file, rng_file, step_of, tag_for
from megadyt.training.run.provenance import describe, model_changes


class CheckpointSaveError(MegadytError):
    """A save failed on some rank (disk full, unwritable dir); `latest` was not moved."""


def describe_write_error(exc: Exception, fallback_path: Path) -> str:
    """One line for a failed write: the reason, the file, and the free space left there.

    A full disk is an OSError from Python's own writes but a RuntimeError from torch's zip
    writer (and DeepSpeed may raise others), so every exception is described the same way."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        path = Path(exc.filename) if exc.filename else fallback_path
    else:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = f"{type(exc).__name__}: {(lines[-1] if lines else 'no message')[:200]}"
        path = fallback_path
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    free = ""
    if existing is not None:
        free = f", {shutil.disk_usage(existing).free / 2**20:,.1f} MiB free there"
    return f"{reason} ({path}{free})"


def save_checkpoint(
    engine,
    run: RunDir,
    step: int,
    client_state: dict,
    before_publish: Callable[[Path], None] | None = None,
    model: dict | None = None,
) -> Path:
    """Save a complete checkpoint for `step` (all ranks call this), then publish it.

    `before_publish(tag_dir)` runs on every rank after DeepSpeed's files are written and before
    the manifest, so whatever it writes is covered by the checksums. If any rank fails to write,
    nothing is published: the partial directory is removed and `latest` keeps pointing at the
    previous complete checkpoint; CheckpointSaveError is raised on every rank."""
    tag = tag_for(step)
    tag_dir, rank = run.tag_dir(tag), dist.get_rank()
    if rank == 0 and tag_dir.exists():
        # a stale dir of this step (saved before a fallback or rollback): while being rewritten
        # it must not look complete, and its old files must not enter the new manifest
        manifest_file(tag_dir).unlink(missing_ok=True)
        shutil.rmtree(tag_dir, ignore_errors=True)
    dist.barrier()
    error = _write_files(engine, run, tag, client_state, before_publish)
    if first_error(error) is None:  # every rank wrote: checksum and publish
        error = _publish(run, tag, step, model)
    first = first_error(error)
    if first is not None:
        previous = run.latest_tag()
        if rank == 0 and previous != tag:
            shutil.rmtree(tag_dir, ignore_errors=True)
        raise CheckpointSaveError(
            f"checkpoint save at step {step} failed, {first}; {run.latest_file} still points "
            f"at {previous or 'nothing'}: free space or fix the run dir, then rerun to resume"
        )
    dist.barrier()
    return tag_dir


def _write_files(engine, run: RunDir, tag: str, client_state: dict, before_publish) -> str | None:
    """DeepSpeed's files, this rank's RNG states and `before_publish`'s; this rank's error."""
    tag_dir, rank = run.tag_dir(tag), dist.get_rank()
    try:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        engine.save_checkpoint(
            str(run.checkpoints), tag=tag, client_state=client_state, save_latest=False
        )
        with atomic_output(rng_file(tag_dir, rank)) as tmp:
            torch.save(rng_state(), tmp)
        if before_publish is not None:
            before_publish(tag_dir)
    except Exception as exc:  # noqa: BLE001 - any failure of a write is a failed save
        return f"rank {rank}: {describe_write_error(exc, tag_dir)}"
    return None


def _publish(run: RunDir, tag: str, step: int, model: dict | None) -> str | None:
    """Every rank hashes its share of the files, rank 0 writes the manifest and then moves
    `latest`; this rank's error."""
    tag_dir, rank = run.tag_dir(tag), dist.get_rank()
    try:
        write_manifest(tag_dir, step, model)
    except Exception as exc:  # noqa: BLE001
        return f"rank {rank}: {describe_write_error(exc, manifest_file(tag_dir))}"
    if rank == 0:
        try:
            run.publish_latest(tag)
        except Exception as exc:  # noqa: BLE001
            return f"rank 0: {describe_write_error(exc, manifest_file(tag_dir))}"
    return None


def has_checkpoint(run: RunDir) -> bool:
    """Whether this run will resume (rank 0 looks, every rank gets the same answer)."""
    return bool(from_rank0(run.latest_tag() is not None if dist.get_rank() == 0 else None))


def verify_checkpoint(tag_dir: Path, only: str | None = None) -> dict:
    """Check sizes and checksums against the manifest in this process (readers: eval,
    export); raise naming the first bad file. Training verifies across ranks instead
    (`manifest.verify_shared`).

    `only` (a subdirectory, e.g. the weights) limits the check to the files a reader uses;
    then every file there must be in the manifest, so an added or swapped file is refused too."""
    tag_dir = Path(tag_dir)
    manifest = read_manifest(tag_dir)
    files = manifest["files"]
    if only is not None:
        files = {rel: meta for rel, meta in files.items() if rel.startswith(f"{only}/")}
        on_disk = {str(p.relative_to(tag_dir)) for p in (tag_dir / only).rglob("*") if p.is_file()}
        unlisted = sorted(on_disk - set(files))
        if unlisted or not files:
            culprit = tag_dir / unlisted[0] if unlisted else tag_dir / only
            raise MegadytError(
                f"checkpoint file {culprit} is not covered by {manifest_file(tag_dir).name} "
                "(added or replaced after the save); restore the checkpoint"
            )
    check_files(tag_dir, files, manifest["hash"])
    return manifest


def verify_listed(tag_dir: Path, names: list[str]) -> None:
    """Check the files `names` (relative to `tag_dir`) against the manifest: each must be
    listed and match, else MegadytError naming it."""
    manifest = read_manifest(tag_dir)
    unlisted = [rel for rel in names if rel not in manifest["files"]]
    if unlisted:
        raise MegadytError(
            f"checkpoint file {tag_dir / unlisted[0]} is not in {manifest_file(tag_dir).name}; "
            "restore the checkpoint"
        )
    check_files(tag_dir, {rel: manifest["files"][rel] for rel in names}, manifest["hash"])


def choose_checkpoint(run: RunDir, fallback: bool) -> tuple[str | None, str | None, str | None]:
    """(tag to load, error if none can be loaded, note about a fallback), the same on every
    rank: all ranks verify each candidate together (a collective)."""
    tag = from_rank0(run.latest_tag())
    if tag is None:
        return None, None, None
    first_error = verify_shared(run.tag_dir(tag))
    if first_error is None:
        return tag, None, None
    if not fallback:
        return (
            None,
            f"{first_error} (or rerun with --resume-fallback to use the previous one)",
            None,
        )
    for older in from_rank0(run.complete_tags()):
        if step_of(older) >= (step_of(tag) or 0):
            continue
        if verify_shared(run.tag_dir(older)) is None:
            return older, None, f"{first_error}; falling back to {run.tag_dir(older)}"
    return None, f"{first_error}; no earlier complete checkpoint verifies either", None


def recover_latest(run: RunDir) -> str | None:
    """Repair a missing or empty `latest` (a collective): a run directory that holds a
    checkpoint is never trained from scratch, which would overwrite it step by step.

    The newest checkpoint whose files verify is published as `latest` (atomically) and the
    line saying so is returned; None when `latest` names a tag or no checkpoint exists. A step
    directory without a manifest is a save that never finished (the manifest is written last,
    and nothing publishes a directory without one): it is no checkpoint, and a fresh start
    replaces it as before. Checkpoints of which none verifies are refused by name."""
    rank0 = dist.get_rank() == 0
    latest, tags = from_rank0((run.latest_tag(), run.complete_tags()) if rank0 else None)
    if latest is not None or not tags:
        return None
    state = "is empty" if from_rank0(run.latest_file.exists() if rank0 else None) else "is missing"
    errors = []
    for tag in tags:
        error = verify_shared(run.tag_dir(tag))
        if error is None:
            if rank0:
                run.publish_latest(tag)
            dist.barrier()  # every rank reads `latest` from here on
            return (
                f"{run.latest_file} {state}; resuming from {tag}, the newest checkpoint that "
                "verifies"
            )
        errors.append(error)
    raise MegadytError(
        f"{run.latest_file} {state} and none of the checkpoints in {run.checkpoints} verifies "
        f"({', '.join(tags)}; {tags[0]}: {errors[0]}); restore one from a backup, or move "
        f"{run.checkpoints} away to train the run from scratch"
    )


def finished_at(run: RunDir, stop_at: int, fallback: bool) -> int | None:
    """The step of the checkpoint a resume would load, when it is at or past `stop_at`: the
    run has nothing left to train. None otherwise. A collective, verifying like a resume: a
    damaged checkpoint is refused as on resume, or (with `fallback`) the one before it is
    trained on from."""
    if from_rank0(run.latest_step() if dist.get_rank() == 0 else None) < stop_at:
        return None
    tag, error, _ = choose_checkpoint(run, fallback)
    if error:
        raise MegadytError(error)
    step = step_of(tag or "") or 0
    return step if step >= stop_at else None


def check_same_model(tag_dir: Path, saved: dict | None, model: dict | None) -> None:
    """A checkpoint of another model (e.g. DyT loaded into an RMSNorm config) is refused."""
    if not saved or not model:
        return
    changes = model_changes(saved, model)
    if changes:
        raise MegadytError(
            f"checkpoint {tag_dir} is of a different model ({describe(changes)}); use the "
            "config it was trained with, or a new run.dir"
        )


def load_checkpoint(
    engine, run: RunDir, fallback: bool = False, model: dict | None = None
) -> dict | None:
    """Resume from `latest` if there is one; returns the client state (None: fresh start).

    All ranks verify the manifest together and agree on what to load (or the error), so a bad
    checkpoint fails all ranks with the same one-line message instead of hanging the others."""
    tag, error, note = choose_checkpoint(run, fallback)
    if error:
        raise MegadytError(error)
    if tag is None:
        return None
    if note and dist.get_rank() == 0:
        print(f"megadyt: warning: {note}", flush=True)
    tag_dir = run.tag_dir(tag)
    manifest = json.loads(manifest_file(tag_dir).read_text())
    check_same_model(tag_dir, manifest.get("model"), model)
    if manifest.get("kind") == WEIGHTS_ONLY:
        if tag != from_rank0(run.latest_tag()):  # a fallback: the model holds other weights
            raise MegadytError(
                f"the only checkpoint that verifies is {tag_dir}, the run's imported weights; "
                f"to restart from them, write {tag} into {run.latest_file} and rerun"
            )
        # the run's starting weights (`training.checkpoint.initial`), loaded before the engine
        return None
    saved_world, world = manifest["world_size"], dist.get_world_size()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if reshard.needs_universal(engine, tag_dir, saved_world, tp, world):
        reshard.ensure_universal(run, tag, saved_world, world)
        load_path, client_state = reshard.load_universal(engine, run, tag)
    else:
        load_path, client_state = engine.load_checkpoint(
            str(run.checkpoints), tag=tag, load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )  # fmt: skip
    if load_path is None:
        raise MegadytError(f"DeepSpeed could not load checkpoint {tag_dir}")
    rng_path = rng_file(tag_dir, dist.get_rank())
    if rng_path.is_file():
        set_rng_state(torch.load(rng_path, weights_only=True))
    return client_state
