"""Task suites, per-task loading with readable failures, and result summaries for `megadyt eval`.

Each task is loaded on its own, so one that cannot be built (unknown name, hub dataset that cannot
download) is reported with its name and reason while the others still run. A task's headline
score is its first metric found in `PRIMARY_METRICS`; the suite average is the unweighted mean
of the headline scores that are accuracies (acc, em, exact_match), as in the paper's Table 4.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from megadyt.errors import MegadytError
from megadyt.evaluation.offline import OFFLINE_TASKS, TASKS_DIR

PAPER15 = [
    "anli_r1",
    "anli_r2",
    "anli_r3",
    "arc_challenge",
    "arc_easy",
    "boolq",
    "hellaswag",
    "openbookqa",
    "piqa",
    "record",
    "rte",
    "truthfulqa_mc1",
    "truthfulqa_mc2",
    "wic",
    "winogrande",
]
SUITES = {"paper15": PAPER15, "offline": OFFLINE_TASKS}
ACCURACY_METRICS = ("acc", "em", "exact_match")
PRIMARY_METRICS = (*ACCURACY_METRICS, "bits_per_byte", "word_perplexity", "f1")

log = logging.getLogger(__name__)


def expand_tasks(spec: str | Iterable[str]) -> list[str]:
    """'paper15', 'offline', 'a,b', or a mix ('offline,piqa') -> task names, order kept."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in (i.strip() for i in items):
        for name in SUITES.get(item, [item] if item else []):
            if name not in out:
                out.append(name)
    if not out:
        raise MegadytError("--tasks is empty; give a suite (paper15, offline) or task names")
    return out


def _task_paths(include_paths: Iterable[str]) -> tuple[str, ...]:
    paths = [str(TASKS_DIR)]
    for path in include_paths:
        if not os.path.isdir(path):
            raise MegadytError(f"--include-path {path!r} is not a directory of task YAMLs")
        paths.append(os.path.abspath(path))
    return tuple(paths)


def task_manager(include_paths: Iterable[str] = ()):
    """lm-eval's TaskManager over its own tasks, evaluation/tasks, and any extra paths
    (one per set of paths and process: indexing lm-eval's tasks takes seconds)."""
    return _task_manager(_task_paths(include_paths))


@functools.lru_cache(maxsize=4)
def _task_manager(paths: tuple[str, ...], defaults: bool = True):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=defaults)


def check_task_names(names: list[str], include_paths: Iterable[str] = ()) -> None:
    """Refuse names lm-eval does not know, all in one line, before any model is loaded.
    Cheap where it can be: evaluation/tasks and --include-path alone are indexed at once; only
    names not found there need lm-eval's whole index (seconds, without torch; cached for the
    evaluation that follows)."""
    paths = _task_paths(include_paths)
    local = set(_task_manager(paths, defaults=False).all_tasks)
    left = [name for name in names if name not in local]
    if not left:
        return
    known = _task_manager(paths).all_tasks
    unknown = [name for name in left if name not in set(known)]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.8)
        if close:
            asked = f"{name}: " if len(unknown) > 1 else ""
            hints.append(f"{asked}did you mean {' or '.join(close)}?")
    raise MegadytError(
        f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: not in lm-eval's "
        "tasks, evaluation/tasks or --include-path; "
        + ("; ".join(hints) if hints else "suites: paper15, offline")
    )


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:300]}"


def load_tasks(names: list[str], manager) -> tuple[dict[str, Any], dict[str, str]]:
    """({name: lm-eval task dict}, {name: why it could not be loaded}), one task at a time."""
    from lm_eval.tasks import get_task_dict

    loaded, errors = {}, {}
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            errors[name] = (
                "unknown task: not in lm-eval's tasks, evaluation/tasks or --include-path"
            )
            continue
        try:
            loaded[name] = get_task_dict([name], manager)
        except Exception as exc:  # noqa: BLE001 - any failure is reported per task
            hint = ""
            if "hub" in str(exc).lower() or "connection" in type(exc).__name__.lower():
                hint = " (its dataset must be downloaded from the Hugging Face hub)"
            errors[name] = f"could not load{hint}: {_reason(exc)}"
    return loaded, errors


def _flatten(task_dicts: Iterable[dict]) -> list:
    """Task objects out of get_task_dict's (possibly grouped) dicts."""
    out = []
    for d in task_dicts:
        for value in d.values():
            out.extend(_flatten([value]) if isinstance(value, dict) else [value])
    return out


@dataclass
class EvalReport:
    """Per-task headline scores, all metrics, failures, and the accuracy average."""

    scores: dict[str, tuple[str, float]] = field(default_factory=dict)  # task -> (metric, v)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)  # requested order

    @property
    def average(self) -> float | None:
        values = [v for m, v in self.scores.values() if m in ACCURACY_METRICS]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        return {
            "tasks": {
                name: {"metric": metric, "value": value, "metrics": self.metrics[name]}
                for name, (metric, value) in self.scores.items()
            },
            "average": self.average,
            "average_over": [n for n, (m, _) in self.scores.items() if m in ACCURACY_METRICS],
            "errors": self.errors,
        }

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: eval/<task> (headline score) and eval/average."""
        out = {f"eval/{name}": value for name, (_, value) in self.scores.items()}
        if self.average is not None:
            out["eval/average"] = self.average
        return out

    def table(self) -> str:
        lines = ["| task | metric | score |", "|---|---|---|"]
        for name in self.tasks:
            if name in self.scores:
                metric, value = self.scores[name]
                shown = f"{100 * value:.2f}" if metric in ACCURACY_METRICS else f"{value:.4f}"
                lines.append(f"| {name} | {metric} | {shown} |")
            else:
                lines.append(f"| {name} | failed | {self.errors.get(name, '?')} |")
        if self.average is not None:
            n = len(self.to_dict()["average_over"])
            lines.append(f"| **average** ({n} tasks) | acc | {100 * self.average:.2f} |")
        return "\n".join(lines)


def _summarise(results: dict, report: EvalReport) -> None:
    for name, values in results.get("results", {}).items():
        metrics = {}
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if (
                metric.endswith("_stderr")
                or metric == "sample_len"
                or not isinstance(value, int | float)
            ):
                continue
            if isinstance(value, float) and math.isnan(value):
                continue
            metrics[metric if filt in ("none", "") else f"{metric},{filt}"] = float(value)
        report.metrics[name] = metrics
        plain = {k.split(",")[0]: v for k, v in metrics.items()}
        for metric in PRIMARY_METRICS:
            if metric in plain:
                report.scores[name] = (metric, plain[metric])
                break


def evaluate(
    lm,
    tasks: str | Iterable[str],
    *,
    include_paths: Iterable[str] = (),
    limit: int | float | None = None,
    num_fewshot: int | None = None,
) -> tuple[EvalReport, dict]:
    """Run lm-eval on `lm` (an lm-eval LM). Returns (report, lm-eval's raw results dict)."""
    import lm_eval

    names = expand_tasks(tasks)
    manager = task_manager(include_paths)
    loaded, errors = load_tasks(names, manager)
    report = EvalReport(errors=dict(errors), tasks=names)
    for name, reason in errors.items():
        log.warning("task %s: %s", name, reason)
    if not loaded:
        return report, {}
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=_flatten(loaded.values()),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=0,
    )
    _summarise(results or {}, report)
    for name in loaded:
        if name not in report.scores and name not in report.metrics:
            report.errors[name] = "ran but reported no results"
    return report, results or {}
