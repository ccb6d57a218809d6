"""What a run records about each start, and which config changes a resume may make.

`RUN/config.yaml` is the config the run trains with now. It is written only after every
start-up check has passed (layout, the run lock, resume compatibility, checkpoint verification),
so a refused rerun leaves it as it was. `RUN/history.jsonl` gains a "start" record for each start
(time, host, world size, software and git versions, config digest, resumed step, any accepted
changes) and an "end" record for each exit (the last step, and how the run ended).

On resume the config is compared with the run's `config.yaml`:
- `model` says what the weights are. A change is always refused; the exceptions are
  `MODEL_FREE_KEYS` (how the model is computed, or how a fresh run initialised it).
- `SCHEDULE_KEYS` decide the optimisation trajectory: length, LR schedule, batch, optimizer,
  seed and data. A change is refused unless `--allow-config-change` is given; then it is
  printed and recorded in the history.
- Everything else (intervals, logging, the parallel layout) is free; the digest records it.
A key the recorded config lacks was added to megadyt after the run began; the run trained
under that key's default (every new key's default is the old behaviour), so it compares as
its default and an upgrade resumes unhindered.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import os
import socket
import subprocess
from pathlib import Path

from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.parallel.distributed import from_rank0
from megadyt.training.run.layout import RunDir

# How a model is computed, not what it is: free to change between save and resume.
EXECUTION_ONLY_MODEL_KEYS = frozenset({"norm_impl", "attention_impl", "fused_loss"})
# How a fresh run chose its starting weights and α: a resume loads both from the checkpoint.
INITIALIZATION_ONLY_MODEL_KEYS = frozenset(
    {
        "init_std",
        "alpha_init",
        "alpha_calibration_attention",
        "alpha_calibration_other",
        "alpha_calibration_final",
    }
)
MODEL_FREE_KEYS = EXECUTION_ONLY_MODEL_KEYS | INITIALIZATION_ONLY_MODEL_KEYS
SCHEDULE_KEYS = {
    "train": (
        "steps",
        "lr",
        "min_lr_ratio",
        "warmup_steps",
        "global_batch_size",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_eps",
        "grad_clip",
        "decay_norm_params",
        "decay_norm_scalars",
        "norm_scalar_lr_scale",
        "seed",
    ),
    "data": ("prefixes", "weights", "split", "tokenizer"),
}
SOFTWARE = ("megadyt", "torch", "megatron-core", "deepspeed")

Changes = dict[str, list]  # "section.key" -> [value there, value here]


def config_digest(config: dict) -> str:
    """The sha256 of a config's canonical JSON: equal digests, equal configs."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@functools.cache
def _defaults() -> dict:
    return Config().to_dict()


def _recorded(saved: dict, section: str, key: str):
    """`key` of a recorded config's `section`; its default if megadyt had no such key then."""
    return saved[key] if key in saved else _defaults()[section].get(key)


def model_changes(saved: dict, model: dict, ignored: frozenset = MODEL_FREE_KEYS) -> Changes:
    """The `model` keys that differ between a saved run and this config (`ignored` keys, by
    default the free ones, left out)."""
    keys = sorted((set(saved) | set(model)) - ignored)
    pairs = {k: [_recorded(saved, "model", k), model.get(k)] for k in keys}
    return {f"model.{k}": pair for k, pair in pairs.items() if pair[0] != pair[1]}


def schedule_changes(previous: dict, current: dict) -> Changes:
    changes: Changes = {}
    for section, keys in SCHEDULE_KEYS.items():
        before, after = previous.get(section, {}), current.get(section, {})
        for key in keys:
            recorded = _recorded(before, section, key)
            if recorded != after.get(key):
                changes[f"{section}.{key}"] = [recorded, after.get(key)]
    return changes


def result_changes(saved: dict, config: dict) -> Changes:
    """What differs between a finished run's recorded config and `config` that can change the
    run's result: the model, its initialisation included, and the schedule."""
    before, after = saved.get("model", {}), config.get("model", {})
    return {
        **model_changes(before, after, ignored=EXECUTION_ONLY_MODEL_KEYS),
        **schedule_changes(saved, config),
    }


def describe(changes: Changes, limit: int = 3) -> str:
    """`model.norm='dyt' there vs 'rmsnorm' here, ...` for an error message."""
    parts = [f"{k}={a!r} there vs {b!r} here" for k, (a, b) in list(changes.items())[:limit]]
    more = len(changes) - limit
    return ", ".join(parts) + (f" and {more} more" if more > 0 else "")


def check_resume(run: RunDir, config: dict, allow_change: bool) -> Changes:
    """Compare `config` with the run's recorded one before a resume. Returns the accepted
    schedule changes; raises for a model change, and for a schedule change not allowed."""
    previous = run.read_config()
    if not previous:
        return {}  # no record to compare with: the checkpoint's manifest still guards the model
    changed_model = model_changes(previous.get("model", {}), config.get("model", {}))
    if changed_model:
        raise MegadytError(
            f"run.dir {run.root} holds a run of a different model ({describe(changed_model)}); "
            "use the config it was trained with, or a new run.dir"
        )
    changes = schedule_changes(previous, config)
    if changes and not allow_change:
        raise MegadytError(
            f"resuming {run.root} would change its training schedule ({describe(changes)}); "
            "rerun with the run's config, or pass --allow-config-change to continue under the "
            f"new one (recorded in {run.history})"
        )
    return changes


def _git_version() -> str | None:
    """The commit megadyt runs from (with "-dirty" for local edits); None outside a checkout."""
    source = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def software_versions() -> dict:
    versions = {}
    for name in SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["git"] = _git_version()
    return versions


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RunRecord:
    """Rank 0's writer of config.yaml and history.jsonl for one start (a no-op elsewhere)."""

    def __init__(self, run: RunDir, config: dict, world_size: int, changes: Changes, rank0: bool):
        self.run, self.config, self.world_size = run, config, world_size
        self.changes, self.rank0 = changes, rank0
        self.started_at: str | None = None

    def started(self, resumed_step: int | None) -> None:
        """Every check passed: record the config and this start (a collective: a failed write
        on rank 0, e.g. a full disk, is the same one-line error on every rank)."""
        error = None
        if self.rank0:
            try:
                self._write_start(resumed_step)
            except MegadytError as exc:
                error = str(exc)
        error = from_rank0(error)
        if error:
            raise MegadytError(error)

    def _write_start(self, resumed_step: int | None) -> None:
        self.run.write_config(self.config)
        self.started_at = _now()
        self.run.append_history(
            {
                "event": "start",
                "time": self.started_at,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
                "world_size": self.world_size,
                "config_digest": config_digest(self.config),
                "resumed_step": resumed_step,
                "config_changes": self.changes,
                "software": software_versions(),
            }
        )

    def ended(self, step: int | None, outcome: str) -> None:
        """Record how this start ended: "completed", "stopped" (train.stop_at_step), "stopped
        by SIGUSR1" (a stop request; or SIGTERM) or "error: ..."."""
        if self.rank0 and self.started_at is not None:
            self.run.append_history(
                {"event": "end", "time": _now(), "step": step, "outcome": outcome}
            )
