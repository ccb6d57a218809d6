"""Summaries of a sweep: mean ± std of the final validation loss per grid point over seeds, as a
markdown table, a JSON file and, for two-key grids, a heatmap in the style of the paper's α₀
grids (rows: the first key, columns: the second, failed points marked)."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from megadyt.atomic import atomic_output, atomic_write_text
from megadyt.experiments.grid import GridAxis
from megadyt.experiments.runner import CellResult


@dataclass
class PointSummary:
    assignment: dict[str, str]
    losses: list[float]  # one per finished seed
    failed: int

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.losses) if self.losses else None

    @property
    def std(self) -> float | None:
        if not self.losses:
            return None
        return statistics.stdev(self.losses) if len(self.losses) > 1 else 0.0

    def describe(self) -> str:
        if self.mean is None:
            return "failed"
        text = f"{self.mean:.4f} ± {self.std:.4f}"
        return text + (f" ({self.failed} failed)" if self.failed else "")


def summarize(points: list[dict[str, str]], results: list[CellResult]) -> list[PointSummary]:
    out = []
    for assignment in points:
        mine = [r for r in results if r.assignment == assignment]
        losses = [r.valid_loss for r in mine if r.status == "done" and r.valid_loss is not None]
        out.append(PointSummary(assignment, losses, sum(r.status != "done" for r in mine)))
    return out


def markdown_table(axes: list[GridAxis], summaries: list[PointSummary]) -> str:
    keys = [a.key for a in axes]
    head = [*keys, "valid loss (mean ± std)", "seeds", "per seed"]
    rows = [
        [
            *(s.assignment[k] for k in keys),
            s.describe(),
            str(len(s.losses)),
            ", ".join(f"{v:.4f}" for v in s.losses),
        ]
        for s in summaries
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(
    path: Path, meta: dict, summaries: list[PointSummary], results: list[CellResult]
) -> Path:
    payload = {
        **meta,
        "points": [
            {
                "assignment": s.assignment,
                "mean": s.mean,
                "std": s.std,
                "seeds": len(s.losses),
                "failed": s.failed,
                "losses": s.losses,
            }
            for s in summaries
        ],
        "cells": [r.to_dict() for r in results],
    }
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


def heatmap(path: Path, axes: list[GridAxis], summaries: list[PointSummary], title: str) -> Path:
    """Mean final validation loss over a two-key grid; lower is better (darker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols = axes
    grid = np.full((len(rows.values), len(cols.values)), np.nan)
    for s in summaries:
        if s.mean is not None:
            grid[
                rows.values.index(s.assignment[rows.key]), cols.values.index(s.assignment[cols.key])
            ] = s.mean
    fig, ax = plt.subplots(figsize=(1.2 * len(cols.values) + 2.5, 0.8 * len(rows.values) + 2))
    finite = grid[np.isfinite(grid)]
    image = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap="viridis_r",
        vmin=finite.min() if finite.size else None,
        vmax=finite.max() if finite.size else None,
    )
    image.cmap.set_bad("lightgray")
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            value = grid[i, j]
            if math.isnan(value):
                ax.text(j, i, "failed", ha="center", va="center", fontsize=9)
                continue
            # viridis_r is bright (yellow) for low losses: dark text there, light text elsewhere
            bright = (value - low) / ((high - low) or 1.0) < 0.5
            ax.text(
                j,
                i,
                f"{value:.3f}",
                ha="center",
                va="center",
                fontsize=9,
                color="black" if bright else "white",
            )
    ax.set_xticks(range(len(cols.values)), cols.values)
    ax.set_yticks(range(len(rows.values)), rows.values)
    ax.set_xlabel(cols.key)
    ax.set_ylabel(rows.key)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="final validation loss")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
