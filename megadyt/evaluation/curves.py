"""Loss curves from runs' TensorBoard logs, aligned by tokens, for `megadyt compare`.

A run's x axis is `train/tokens` (cumulative tokens, logged at every train and validation log
step); where a step has no token count it is derived from the run's config.yaml
(step × global_batch_size × seq_length). Runs of different lengths or logging intervals are
compared by interpolating each curve onto the baseline's token positions inside their common
range. `--smooth K` is a trailing moving average over K logged train-loss points.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megadyt.errors import MegadytError
from megadyt.evaluation.harness import ACCURACY_METRICS
from megadyt.evaluation.results import zero_shot_results
from megadyt.training.run.layout import RunDir

TRAIN, VALID, TOKENS = "train/loss", "valid/loss", "train/tokens"


@dataclass
class RunCurves:
    name: str
    run_dir: Path
    norm: str | None
    train: tuple[np.ndarray, np.ndarray]  # (tokens, loss)
    valid: tuple[np.ndarray, np.ndarray]
    zero_shot: dict | None = None  # the results file of its table (`zero_shot_results`)
    zero_shot_file: str | None = None
    extra: dict = field(default_factory=dict)  # every logged scalar: tag -> (tokens, values)

    @property
    def eval_average(self) -> float | None:
        return (self.zero_shot or {}).get("average")

    @property
    def final_train(self) -> float | None:
        return float(self.train[1][-1]) if len(self.train[1]) else None

    @property
    def final_valid(self) -> float | None:
        return float(self.valid[1][-1]) if len(self.valid[1]) else None

    @property
    def tokens(self) -> int:
        last = [float(xs[-1]) for xs, _ in (self.train, self.valid) if len(xs)]
        return int(max(last)) if last else 0


def read_scalars(tb_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file under tb_dir (later writes win)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    files = sorted(tb_dir.rglob("events.out.tfevents.*"))
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            series = out.setdefault(tag, {})
            for event in acc.Scalars(tag):
                series[int(event.step)] = float(event.value)
    return out


def load_run(run_dir: str | Path) -> RunCurves:
    run = RunDir(run_dir)
    run_dir, tb = run.root, run.tensorboard
    if not tb.is_dir():
        raise MegadytError(
            f"{run_dir} has no {tb.name}/ directory: pass run dirs written by `megadyt train`"
        )
    scalars = read_scalars(tb)
    if TRAIN not in scalars and VALID not in scalars:
        raise MegadytError(f"{tb} has no {TRAIN} or {VALID} scalars")
    cfg = run.read_config()
    tokens_at = scalars.get(TOKENS, {})
    per_step = None
    try:
        per_step = cfg["train"]["global_batch_size"] * cfg["model"]["seq_length"]
    except (KeyError, TypeError):
        pass

    def series(tag: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for step, value in sorted(scalars.get(tag, {}).items()):
            if step in tokens_at:
                xs.append(tokens_at[step])
            elif per_step:
                xs.append(step * per_step)
            else:
                raise MegadytError(f"{tb}: step {step} has no {TOKENS} and no config.yaml")
            ys.append(value)
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    results, results_file = zero_shot_results(run)
    norm = (cfg.get("model") or {}).get("norm") if cfg else None
    return RunCurves(
        name=run_dir.name,
        run_dir=run_dir,
        norm=norm,
        train=series(TRAIN),
        valid=series(VALID),
        zero_shot=results,
        zero_shot_file=results_file,
        extra={tag: series(tag) for tag in scalars},
    )


def _score(entry: dict | None) -> str:
    if not entry:
        return "–"
    value = entry["value"]
    return f"{100 * value:.2f}" if entry.get("metric") in ACCURACY_METRICS else f"{value:.4f}"


def zero_shot_table(runs: list[RunCurves]) -> str | None:
    """Markdown: one row per task, one column per run (its results file's set and step), and
    the accuracy average; None when no run has results."""
    scored = [run for run in runs if run.zero_shot]
    if not scored:
        return None
    tasks: list[str] = []
    for run in scored:
        tasks += [t for t in run.zero_shot.get("tasks", {}) if t not in tasks]
    heads = []
    for run in runs:
        if run.zero_shot is None:
            heads.append(f"{run.name} (none)")
            continue
        task_set = Path(run.zero_shot_file).stem.partition("-")[2] or "results"
        heads.append(f"{run.name} ({task_set}, step {run.zero_shot.get('step', '?')})")
    lines = ["| task | " + " | ".join(heads) + " |", "|---|" + "---|" * len(runs)]
    for task in tasks:
        cells = [_score((run.zero_shot or {}).get("tasks", {}).get(task)) for run in runs]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    averages = ["–" if r.eval_average is None else f"{100 * r.eval_average:.2f}" for r in runs]
    lines.append("| **average** (acc) | " + " | ".join(averages) + " |")
    return "\n".join(lines)


def _save(fig, output: str | Path) -> Path:
    """Write the figure (creating its directory) and free it."""
    import matplotlib.pyplot as plt

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output


def matching_metrics(runs: list[RunCurves], patterns: list[str]) -> list[str]:
    """Logged tags that match any of `patterns` (shell-style, e.g. 'norm/saturated/*') in any
    run, in the order first seen; an unmatched pattern is an error naming what exists."""
    from fnmatch import fnmatchcase

    tags: list[str] = []
    for pattern in patterns:
        found = [t for run in runs for t in run.extra if fnmatchcase(t, pattern)]
        if not found:
            groups = sorted({t.rsplit("/", 1)[0] + "/*" for run in runs for t in run.extra})
            raise MegadytError(
                f"--metric {pattern!r} matches no logged scalar; logged: {', '.join(groups)}"
            )
        tags += [t for t in dict.fromkeys(found) if t not in tags]
    return tags


def plot_metrics(runs: list[RunCurves], tags: list[str], output: str | Path) -> Path:
    """One panel per tag, every run a line against tokens (e.g. saturation of the final norm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    cols = min(3, len(tags))
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for run in runs:
            xs, ys = run.extra.get(tag, ((), ()))
            if len(xs):
                ax.plot(xs, ys, marker="." if len(xs) < 3 else None, lw=1.5, label=run.name)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("tokens")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, output)


def smooth(values: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over k points (the first points average what exists)."""
    if k <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - k)
    return (csum[idx] - csum[lo]) / (idx - lo)


def difference(
    base: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """other - base at base's token positions within both runs' range (linear interpolation)."""
    bx, by = base
    ox, oy = other
    if len(bx) == 0 or len(ox) == 0:
        return np.array([]), np.array([])
    keep = (bx >= ox[0]) & (bx <= ox[-1])
    return bx[keep], np.interp(bx[keep], ox, oy) - by[keep]


def markdown_table(runs: list[RunCurves]) -> str:
    base = runs[0]

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "–" if x is None else format(x, spec)

    def gap(mine: float | None, theirs: float | None) -> str:
        return "–" if mine is None or theirs is None else f"{mine - theirs:+.4f}"

    lines = [
        "| run | norm | tokens | final train loss | final valid loss | Δ train vs "
        f"{base.name} | Δ valid vs {base.name} | zero-shot avg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        avg = "–" if run.eval_average is None else f"{100 * run.eval_average:.2f}"
        lines.append(
            f"| {run.name} | {run.norm or '?'} | {run.tokens:,} | {fmt(run.final_train)} | "
            f"{fmt(run.final_valid)} | {gap(run.final_train, base.final_train)} | "
            f"{gap(run.final_valid, base.final_valid)} | {avg} |"
        )
    return "\n".join(lines)


def plot(runs: list[RunCurves], output: str | Path, k: int = 1) -> Path:
    """Top: train (solid) and valid (dashed, markers) loss vs tokens; bottom: minus run 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, height_ratios=[3, 2])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base = runs[0]
    base_train = (base.train[0], smooth(base.train[1], k))
    for i, run in enumerate(runs):
        color = colors[i % len(colors)]
        label = run.name if not run.norm or run.norm in run.name else f"{run.name} ({run.norm})"
        train = (run.train[0], smooth(run.train[1], k))
        if len(train[0]):
            top.plot(
                *train,
                color=color,
                lw=1.5,
                marker="." if len(train[0]) < 3 else None,
                label=f"{label} train",
            )
        if len(run.valid[0]):
            top.plot(*run.valid, color=color, ls="--", marker="o", ms=3, label=f"{label} valid")
        if i == 0:
            bottom.axhline(0.0, color=color, lw=1, label=f"{label} (baseline)")
            continue
        dx, dy = difference(base_train, train)
        if len(dx):
            bottom.plot(dx, dy, color=color, lw=1.5, label=f"{label} train − baseline")
        vx, vy = difference(base.valid, run.valid)
        if len(vx):
            bottom.plot(
                vx, vy, color=color, ls="--", marker="o", ms=3, label=f"{label} valid − baseline"
            )
    top.set_ylabel("loss")
    top.set_title("loss vs tokens" + (f" (train smoothed over {k} points)" if k > 1 else ""))
    top.grid(alpha=0.3)
    top.legend(fontsize=8)
    bottom.set_xlabel("tokens")
    bottom.set_ylabel(f"loss − {base.name}")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, output)
