"""The run directory: the one place that knows its layout. Everything else asks a `RunDir`.

    RUN/config.yaml              the config the run trains with (written once checks pass)
    RUN/history.jsonl            one record per start and end of `megadyt train` (provenance)
    RUN/lock                     who holds the run now (`training.run.lock`)
    RUN/calibration.json         calibrated α of a fresh DyT/Derf run
    RUN/metrics.jsonl            one JSON record per log step or event
    RUN/tb/                      TensorBoard events (training, and `megadyt eval --run-dir`)
    RUN/eval/step_NNNNNNN-SET.json
                                 zero-shot results of one step on one task set (SET:
                                 `task_set_label`, e.g. paper15), written by the run's final
                                 evaluation and `megadyt eval --run-dir`; read by `megadyt compare`
    RUN/checkpoints/latest       the tag of the newest complete checkpoint, replaced atomically
    RUN/logs/                    stdout/stderr of jobs started by launch/ (SLURM, torchrun)
    RUN/checkpoints/step_NNNNNNN/
        manifest.json            sizes and checksums; written last, so present = complete
        rng_rankNNNNN.pt         every generator's state, one file per rank
        weights/tp_rank_NN.pt    each TP shard's layout, and its weights where DeepSpeed's
                                 files do not hold them (`training.checkpoint.weights`)
        ...                      DeepSpeed's model and optimizer files; a run started by
                                 `megadyt import-hf` has a step_0000000 with the weights
                                 files only (manifest kind "weights", `training.checkpoint.initial`)
    RUN/checkpoints/universal/step_NNNNNNN/
                                 DeepSpeed's universal form of that checkpoint, made when a
                                 run resumes it on another data-parallel size
                                 (`training.checkpoint.reshard`); the newest conversion only
    RUN/checkpoints/universal/step_NNNNNNN.log
                                 the conversion's output
    RUN/checkpoints/.deleting-step_NNNNNNN/
                                 a checkpoint retention is deleting
                                 (`training.checkpoint.retention`); never a step tag, so never read,
                                 and removed by the next pass

A `megadyt sweep` cell adds its own result.json, spec.json and train.log (megadyt.experiments).
Changing a name or the tag format happens here; readers (resume, eval, export, compare, sweep)
go through these methods, so nothing else spells a path.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from megadyt.atomic import atomic_write_text
from megadyt.errors import MegadytError

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = "lock"
CALIBRATION_FILE = "calibration.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
EVAL_DIR = "eval"
CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
MANIFEST_FILE = "manifest.json"
WEIGHTS_DIR = "weights"
UNIVERSAL_DIR = "universal"
TRASH_PREFIX = ".deleting-"  # + a tag: a checkpoint being deleted, which nothing reads

_TAG = re.compile(r"step_(\d{7,})")
_EVAL_FILE = re.compile(r"step_(\d{7,})(?:-([A-Za-z0-9_.+-]+))?\.json")
_LABEL_MAX = 60


def tag_for(step: int) -> str:
    """The checkpoint (and eval result) name of `step`: step_0000042."""
    if step < 0:
        raise ValueError(f"a step is never negative, got {step}")
    return f"step_{step:07d}"


def step_of(tag: str) -> int | None:
    """The step a tag names (the inverse of `tag_for`); None when `tag` is not a step tag."""
    match = _TAG.fullmatch(tag)
    return int(match.group(1)) if match else None


def task_set_label(tasks: Iterable[str]) -> str:
    """The name of a zero-shot task set in result file names: its suites and task names as given,
    joined by '+' ("paper15", "arc_easy+piqa"); a long list becomes its first name, its size and
    a digest, so that every list has one short name."""
    names = [n.strip() for item in tasks for n in str(item).split(",") if n.strip()]
    if not names:
        raise ValueError("a task set names at least one suite or task")
    label = re.sub(r"[^A-Za-z0-9_.+-]", "_", "+".join(names))
    if len(label) <= _LABEL_MAX:
        return label
    digest = hashlib.sha256(label.encode()).hexdigest()[:8]
    return f"{label.split('+')[0][:24]}+{len(names) - 1}more-{digest}"


def rng_file(tag_dir: Path, rank: int) -> Path:
    return Path(tag_dir) / f"rng_rank{rank:05d}.pt"


def weights_file(tag_dir: Path, tp_rank: int) -> Path:
    return Path(tag_dir) / WEIGHTS_DIR / f"tp_rank_{tp_rank:02d}.pt"


def weights_files(tag_dir: Path) -> list[Path]:
    """Every TP shard's weights file of one checkpoint, in TP rank order."""
    return sorted((Path(tag_dir) / WEIGHTS_DIR).glob("tp_rank_*.pt"))


def manifest_file(tag_dir: Path) -> Path:
    return Path(tag_dir) / MANIFEST_FILE


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_checkpoint(cls, tag_dir: Path) -> RunDir:
        """The run a checkpoint's step directory belongs to."""
        return cls(Path(tag_dir).parent.parent)

    # -- files of the run ----------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    def _write_text(self, path: Path, text: str) -> None:
        """Atomically; a full or unwritable disk is one clear error."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
        except OSError as exc:
            raise MegadytError(
                f"cannot write {path}: {exc.strerror or exc}; free space in "
                "run.dir or choose another one"
            ) from exc

    def write_config(self, config: dict) -> None:
        self._write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def append_history(self, record: dict) -> None:
        """Add one JSON line to history.jsonl (the whole file is replaced atomically)."""
        old = self.history.read_text() if self.history.is_file() else ""
        self._write_text(self.history, old + json.dumps(record) + "\n")

    def read_history(self) -> list[dict]:
        if not self.history.is_file():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line]

    def read_config(self) -> dict:
        """The run's config as a dict; {} when the run has none (e.g. not written by train)."""
        if not self.config.is_file():
            return {}
        return yaml.safe_load(self.config.read_text()) or {}

    # -- checkpoints ---------------------------------------------------------------------------
    def tag_dir(self, tag: str) -> Path:
        return self.checkpoints / tag

    @property
    def latest_file(self) -> Path:
        return self.checkpoints / LATEST_FILE

    def latest_tag(self) -> str | None:
        path = self.latest_file
        if not path.is_file():
            return None
        return path.read_text().strip() or None

    def latest_step(self) -> int:
        """The step `latest` names; 0 when there is no checkpoint (or it names no step)."""
        return step_of(self.latest_tag() or "") or 0

    def publish_latest(self, tag: str) -> None:
        """Point `latest` at `tag` (atomic: readers see the old or the new tag)."""
        atomic_write_text(self.latest_file, tag)

    def complete_tags(self) -> list[str]:
        """Tags of checkpoints that have a manifest, newest first."""
        tags = [
            p.name
            for p in self.checkpoints.glob("step_*")
            if step_of(p.name) is not None and manifest_file(p).is_file()
        ]
        return sorted(tags, key=lambda t: step_of(t) or 0, reverse=True)

    def step_dirs(self) -> list[Path]:
        """Every step directory, complete or not (a save in progress, a crashed one), oldest
        first."""
        dirs = [p for p in self.checkpoints.glob("step_*") if step_of(p.name) is not None]
        return sorted((p for p in dirs if p.is_dir()), key=lambda p: step_of(p.name) or 0)

    @property
    def universal_root(self) -> Path:
        """Where DeepSpeed universal conversions live (the load_dir for `load_universal`)."""
        return self.checkpoints / UNIVERSAL_DIR

    def universal_dir(self, tag: str) -> Path:
        return self.universal_root / tag

    def trash_dir(self, tag: str) -> Path:
        """Where a checkpoint is moved to be deleted: not a step tag, so nothing loads it."""
        return self.checkpoints / f"{TRASH_PREFIX}{tag}"

    def trash_dirs(self) -> list[Path]:
        """Checkpoints a deletion left behind (a crash, or a file that could not be removed)."""
        return sorted(self.checkpoints.glob(f"{TRASH_PREFIX}*"))

    # -- evaluation results --------------------------------------------------------------------
    def eval_json(self, step: int, task_set: str) -> Path:
        """The results file of `step` on a task set (named by `task_set_label`)."""
        return self.root / EVAL_DIR / f"{tag_for(step)}-{task_set}.json"

    def eval_results(self) -> list[tuple[int, str, Path]]:
        """(step, task set, file) of every results file, by step then set name; a file named
        without a set (step_NNNNNNN.json) has the set ''."""
        found = []
        for path in (self.root / EVAL_DIR).glob("step_*.json"):
            match = _EVAL_FILE.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), match.group(2) or "", path))
        return sorted(found)

    def remaining_steps(self, steps: int) -> int:
        """Steps left to train to `steps` after the latest checkpoint (0: the run is complete)."""
        return max(0, steps - self.latest_step())

    def final_table(self, steps: int, tasks: list[str]) -> Path | None:
        """The results file of the run's final evaluation (step `steps` on `tasks`); None
        without final tasks."""
        return self.eval_json(steps, task_set_label(tasks)) if tasks else None

    def missing_final_table(self, steps: int, tasks: list[str]) -> Path | None:
        """The final table's file when the run is complete and the file does not exist yet:
        what the launch scripts still have to evaluate; None otherwise."""
        path = self.final_table(steps, tasks)
        if path is None or self.remaining_steps(steps) > 0 or path.is_file():
            return None
        return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, its checkpoints/ dir or one step dir -> that step dir (the latest for a run).

    The one place user-given checkpoint paths are interpreted (eval, export, lm-eval's model)."""
    path = Path(path)
    for checkpoints in (path, path / CHECKPOINTS_DIR):
        latest = checkpoints / LATEST_FILE
        if latest.is_file() and latest.read_text().strip():
            return checkpoints / latest.read_text().strip()
    if (path / WEIGHTS_DIR).is_dir():
        return path
    raise MegadytError(
        f"no checkpoint found at {path}: pass a run dir, its {CHECKPOINTS_DIR}/ dir, "
        f"or a {CHECKPOINTS_DIR}/step_NNNNNNN dir"
    )


def checkpoint_step(tag_dir: Path) -> int:
    """The step of a resolved checkpoint dir (0 for a dir not named by `tag_for`)."""
    step = step_of(Path(tag_dir).name)
    return 0 if step is None else step
