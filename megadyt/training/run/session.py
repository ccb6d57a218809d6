"""Taking a run for one start of `megadyt train`: the lock, the resume check and the record.

Rank 0 takes the run lock (`run.lock`), checks a resume against the run's config.yaml
(`run.provenance.check_resume`), and every rank gets the verdict, so a refusal is the same
one-line error everywhere, before anything in the run directory is written. While the run is
held, `RunRecord` appends its start and end records to history.jsonl.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.distributed as dist

from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.parallel.distributed import from_rank0
from megadyt.training.run.layout import RunDir
from megadyt.training.run.lock import RunLock
from megadyt.training.run.provenance import RunRecord, check_resume, describe


@contextlib.contextmanager
def open_run(cfg: Config, world_size: int, allow_config_change: bool) -> Iterator[RunRecord]:
    """Hold the run for this start (every rank calls it); yields the run's record."""
    run, rank0, config = RunDir(cfg.run.dir), dist.get_rank() == 0, cfg.to_dict()
    lock = RunLock(run.lock_file) if rank0 else None
    verdict = None
    if lock is not None:
        try:
            lock.acquire()
            changes = check_resume(run, config, allow_config_change) if run.latest_tag() else {}
            verdict = (None, changes, lock.warning)
        except MegadytError as exc:
            lock.release()
            verdict = (str(exc), {}, None)
    error, changes, warning = from_rank0(verdict)
    if error:
        raise MegadytError(error)
    if rank0 and changes:
        warning = (warning + "; " if warning else "") + (
            f"the schedule changes on resume ({describe(changes, 9)}), allowed by "
            f"--allow-config-change and recorded in {run.history}"
        )
    if rank0 and warning:
        print(f"megadyt: warning: {warning}", flush=True)
    record = RunRecord(run, config, world_size, changes, rank0)
    try:
        yield record
    except BaseException as exc:
        with contextlib.suppress(MegadytError):  # never hide the error behind a full disk
            record.ended(None, f"error: {type(exc).__name__}: {str(exc)[:300]}")
        raise
    finally:
        if lock is not None:
            lock.release()
