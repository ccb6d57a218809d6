"""Taking a run for one start of `megadyt train`: the lock, the resume check and the record.

Rank 0 takes the run lock (`run.lock`); all ranks then repair a missing `latest` from the
checkpoints that verify (`checkpoint.store.recover_latest`), so a run that holds a checkpoint is
never trained from scratch; rank 0 checks a resume against the run's config.yaml
(`run.provenance.check_resume`). Every rank gets each verdict, so a refusal is the same
one-line error everywhere, before anything in the run directory is written. While the run is
held, `RunRecord` appends its start and end records to history.jsonl. A start refused before
its record began leaves no trace: the lock file it created, and the run directory it created,
are removed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.parallel.distributed import from_all_ranks, rank0_verdict
from megadyt.training.cadence import Cadence
from megadyt.training.checkpoint.store import finished_at, recover_latest
from megadyt.training.run.layout import RunDir
from megadyt.training.run.lock import RunLock
from megadyt.training.run.provenance import RunRecord, check_resume, config_digest, describe


def _check_same_config_on_all_ranks(config: dict) -> None:
    digests = from_all_ranks(config_digest(config))
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    if bad:
        raise MegadytError(
            f"rank {bad[0]} has a different config from rank 0; launch every rank "
            "with the same --config and --set values"
        )


def _missing_dirs(root: Path) -> list[Path]:
    """`root` and its ancestors that do not exist yet, innermost first (what a start creates)."""
    missing = []
    for path in (root, *root.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


def _undo_start(lock: RunLock, lock_existed: bool, created: list[Path]) -> None:
    """A start refused before its record began: remove the lock file (while still holding it)
    and the directories this start created, as far as they are empty."""
    if lock.held and not lock_existed:
        lock.path.unlink(missing_ok=True)
    lock.release()
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (or not ours to remove): keep it and its parents


def _resume_changes(run: RunDir, config: dict, allow_config_change: bool) -> dict:
    """The accepted schedule changes of a resume (none for a fresh start)."""
    return check_resume(run, config, allow_config_change) if run.latest_tag() else {}


@contextlib.contextmanager
def open_run(cfg: Config, world_size: int, allow_config_change: bool) -> Iterator[RunRecord]:
    """Hold the run for this start (every rank calls it, with the same config); yields the
    run's record."""
    run, rank0, config = RunDir(cfg.run.dir), dist.get_rank() == 0, cfg.to_dict()
    _check_same_config_on_all_ranks(config)
    created = _missing_dirs(run.root.absolute()) if rank0 else []
    lock_existed = rank0 and run.lock_file.exists()
    lock = RunLock(run.lock_file) if rank0 else None
    record = RunRecord(run, config, world_size, {}, rank0)
    try:
        rank0_verdict(lock.acquire if lock else lambda: None)
        warnings = [lock.warning] if rank0 and lock.warning else []
        recovered = recover_latest(run)
        if recovered:
            warnings.append(recovered)
        changes = rank0_verdict(lambda: _resume_changes(run, config, allow_config_change))
        if changes:
            warnings.append(
                f"the schedule changes on resume ({describe(changes, 9)}), allowed by "
                f"--allow-config-change and recorded in {run.history}"
            )
        if rank0:
            for warning in warnings:
                print(f"megadyt: warning: {warning}", flush=True)
        record.changes = changes
        yield record
    except BaseException as exc:
        with contextlib.suppress(MegadytError):  # never hide the error behind a full disk
            record.ended(None, f"error: {type(exc).__name__}: {str(exc)[:300]}")
        raise
    finally:
        if lock is not None:
            if record.started_at is None:
                _undo_start(lock, lock_existed, created)
            lock.release()


def finished_step(cfg: Config) -> int | None:
    """The step of a (verified) checkpoint at or past the step this start trains to, else None.
    Such a rerun has nothing to train, so the trainer builds and writes nothing (no history
    record, no empty TensorBoard file). Rank 0 says so in one line when the run is complete; a
    stop at train.stop_at_step is said by `megadyt train`."""
    run, t = RunDir(cfg.run.dir), cfg.train
    step = finished_at(run, Cadence(t).stop_at, t.resume_fallback)
    if step is not None and dist.get_rank() == 0 and step >= t.steps:
        print(
            f"megadyt: run {run.root} is complete: its latest checkpoint is at step {step} "
            f"and train.steps is {t.steps}; nothing to train",
            flush=True,
        )
    return step
