"""One zero-shot results file: what `megadyt eval --output/--run-dir` and a run's final evaluation
write (RUN/eval/step_N-SET.json, named by `training.run.layout`), and `megadyt compare` reads.

    {"checkpoint", "step", "norm", "dtype", "tp", "limit", "num_fewshot", "seconds",
     "tasks": {task: {"metric", "value", "metrics"}}, "average", "average_over", "errors"}
"""

from __future__ import annotations

import json
from pathlib import Path

from megadyt.atomic import atomic_write_text
from megadyt.evaluation.harness import EvalReport
from megadyt.training.run.layout import RunDir

# The fields that say what was scored how; the rest is provenance (where, how long).
SCORE_FIELDS = ("step", "norm", "limit", "num_fewshot", "tasks", "average", "average_over")


def results_payload(
    report: EvalReport,
    *,
    checkpoint: str | Path,
    step: int,
    norm: str,
    dtype: str,
    tp: int,
    limit: int | None,
    num_fewshot: int | None,
    seconds: float,
) -> dict:
    """The results file's content for one evaluation of one checkpoint."""
    return {
        "checkpoint": str(checkpoint),
        "step": step,
        "norm": norm,
        "dtype": dtype.removeprefix("torch."),
        "tp": tp,
        "limit": limit,
        "num_fewshot": num_fewshot or 0,
        "seconds": round(seconds, 1),
        **report.to_dict(),
    }


def write_results(path: str | Path, payload: dict) -> None:
    """Write a results file atomically (a reader never sees half of one)."""
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")


def read_results(path: str | Path) -> dict | None:
    """A results file's content; None when it cannot be read or is not a results file."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return payload if isinstance(payload, dict) else None


def zero_shot_results(run: RunDir) -> tuple[dict | None, str | None]:
    """(content, path) of the run's table: of its newest evaluated step, the results file with
    the most tasks (the final paper15 table over a smaller set); (None, None) without one."""
    found = [(step, path) for step, _, path in run.eval_results()]
    newest = max((step for step, _ in found), default=None)
    best, best_path = None, None
    for step, path in found:
        payload = read_results(path) if step == newest else None
        if payload and len(payload.get("tasks", {})) > len((best or {}).get("tasks", {})):
            best, best_path = payload, str(path)
    if best is None and found:  # only files without task scores (e.g. an average alone)
        best_path = str(found[-1][1])
        best = read_results(best_path)
    return best, best_path if best is not None else None
