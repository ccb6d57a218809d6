"""Checkpoint retention: a long run saves hundreds of checkpoints; keep the few that matter.

`train.keep_checkpoints=K` keeps the newest K complete checkpoints up to the one `latest` names
(so with `--resume-fallback` a damaged `latest` still has K-1 earlier ones to fall back to, or K
when `latest` has lost its manifest); `train.keep_every=M` also keeps every complete checkpoint
whose step is a multiple of M, forever. The checkpoint `latest` names and every step directory
newer than it (complete or not: a save in progress, or the newer checkpoints of an earlier branch
after a fallback) are never deleted. Older step directories without a manifest are what crashed
saves leave behind; they are deleted too, as a failed save already removes its own partial
directory (`store.save_checkpoint`).

The policy (`steps_to_keep`) is a pure function; `prune` does the file work on rank 0 after a
checkpoint is published, when every rank has finished writing. A deletion is crash-safe:
1. remove the manifest: the directory is no longer complete, so nothing chooses it;
2. rename it to `.deleting-step_NNNNNNN` (`RunDir.trash_dir`), which is not a step tag;
3. delete that tree. Trash a crash left behind is deleted at the start of the next pass.
A crash at any point leaves either the untouched checkpoint or a directory no reader takes for
one. Deleting never stops training: a file that cannot be removed is a warning, retried next time.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from megadyt.config.schema import TrainConfig
from megadyt.training.run.layout import RunDir, manifest_file, step_of


def steps_to_keep(
    complete: Iterable[int], latest: int, keep_last: int | None, keep_every: int | None
) -> set[int]:
    """Which of the `complete` checkpoint steps to keep, `latest` being the step `latest` names:
    the newest `keep_last` up to `latest`, every multiple of `keep_every`, `latest` and all newer
    ones. `keep_last=None` keeps everything."""
    steps = set(complete)
    if keep_last is None:
        return steps
    lineage = sorted((s for s in steps if s <= latest), reverse=True)
    keep = set(lineage[:keep_last]) | {s for s in steps if s >= latest}
    if keep_every is not None:
        keep |= {s for s in steps if s % keep_every == 0}
    return keep


@dataclass(frozen=True)
class Retention:
    """The configured policy (`train.keep_checkpoints`, `train.keep_every`)."""

    keep_last: int
    keep_every: int | None = None

    @classmethod
    def from_config(cls, train: TrainConfig) -> Retention | None:
        """The run's policy; None when every checkpoint is kept (the default)."""
        if train.keep_checkpoints is None:
            return None
        return cls(train.keep_checkpoints, train.keep_every)

    def describe(self) -> str:
        every = f", train.keep_every={self.keep_every}" if self.keep_every is not None else ""
        return f"train.keep_checkpoints={self.keep_last}{every}"

    def doomed(self, run: RunDir) -> list[Path]:
        """The step directories this policy deletes now, oldest first (nothing without `latest`)."""
        latest = step_of(run.latest_tag() or "")
        if latest is None:
            return []
        dirs = run.step_dirs()
        complete = [step_of(p.name) for p in dirs if manifest_file(p).is_file()]
        keep = steps_to_keep(complete, latest, self.keep_last, self.keep_every)
        # `keep` holds complete steps only: an older directory without a manifest goes too
        return [p for p in dirs if step_of(p.name) < latest and step_of(p.name) not in keep]


def delete_checkpoint(run: RunDir, tag_dir: Path) -> None:
    """Delete one step directory crash-safely (manifest, rename to trash, tree); OSError if a
    step fails (what was done so far is safe, and the next pass finishes the job)."""
    manifest_file(tag_dir).unlink(missing_ok=True)
    trash = run.trash_dir(tag_dir.name)
    if trash.exists():  # an earlier deletion of a checkpoint of the same step that failed
        shutil.rmtree(trash)
    tag_dir.rename(trash)
    shutil.rmtree(trash)


def _warn(message: str) -> None:
    print(f"megadyt: warning: retention: {message}; retried at the next checkpoint", flush=True)


def empty_trash(run: RunDir) -> list[str]:
    """Delete what interrupted deletions left behind; the names of what was removed."""
    removed = []
    for trash in run.trash_dirs():
        try:
            shutil.rmtree(trash)
            removed.append(trash.name)
        except OSError as exc:
            _warn(f"cannot delete {trash}: {exc.strerror or exc}")
    return removed


def prune(run: RunDir, retention: Retention) -> list[str]:
    """One retention pass (rank 0 only, after a publish); prints one line naming what it
    deleted, and returns those names."""
    deleted = [f"leftover {name}" for name in empty_trash(run)]
    try:
        doomed = retention.doomed(run)
    except OSError as exc:
        _warn(f"cannot list {run.checkpoints}: {exc.strerror or exc}")
        doomed = []
    for tag_dir in doomed:
        complete = manifest_file(tag_dir).is_file()
        try:
            delete_checkpoint(run, tag_dir)
        except OSError as exc:
            _warn(f"cannot delete {tag_dir}: {exc.strerror or exc}")
            continue
        deleted.append(tag_dir.name if complete else f"{tag_dir.name} (incomplete)")
    if deleted:
        print(f"retention: deleted {', '.join(deleted)} ({retention.describe()})", flush=True)
    return deleted
