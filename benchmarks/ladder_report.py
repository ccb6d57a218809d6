"""The regime ladder's report: gaps to the RMSNorm baselines, a table, a picture, Verma scored.

A gap is (loss of the norm - loss of the baseline) / loss of the baseline, in %, between cells
of the same budget and seed (so the same training tokens and validation samples): negative
means the norm is ahead. Means are over the seeds both cells have. Verma's heuristic is scored
on every DyT/Derf cell that has the diagnostic: it predicts "ahead" when the mean saturated
fraction at the diagnostic step is at least 36%, and is right when the gap's sign agrees.
"""

from __future__ import annotations

import datetime
import json
from collections import defaultdict
from pathlib import Path

from machine import cpu_machine  # benchmarks/, next to this script

BASELINES = ("rmsnorm", "rmsnorm+scalar")


def _gap(loss: float, base: float) -> float:
    return 100.0 * (loss - base) / base


def add_gaps(rows: list[dict]) -> None:
    """Each done row gets gap_vs_<baseline> (%) against the same budget and seed, and
    gap_by_third_vs_<baseline> from the training losses of each third of the run."""
    by_cell = {(r["budget"], r["seed"], r["norm"]): r for r in rows}
    for row in rows:
        for base in BASELINES:
            other = by_cell.get((row["budget"], row["seed"], base))
            if row["norm"] == base or other is None:
                continue
            if row["status"] != "done" or other["status"] != "done":
                continue  # a partial run's thirds are not thirds of the same steps
            if row["valid_loss"] is not None and other["valid_loss"]:
                row[f"gap_vs_{base}"] = _gap(row["valid_loss"], other["valid_loss"])
            mine, theirs = row.get("train_loss_by_third"), other.get("train_loss_by_third")
            if mine and theirs:
                row[f"gap_by_third_vs_{base}"] = [_gap(a, b) for a, b in zip(mine, theirs)]


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (budget, norm): mean loss and gaps over seeds, with the per-seed values."""
    groups: dict[tuple, list[dict]] = defaultdict(list)  # in the order of the rows
    for row in rows:
        if row["valid_loss"] is not None:
            groups[row["budget"], row["norm"]].append(row)
    out = []
    for (budget, norm), members in groups.items():
        entry = {
            "budget": budget,
            "norm": norm,
            "tokens_per_param": members[0]["tokens_per_param"],
            "seeds": [m["seed"] for m in members],
            "valid_loss": _mean([m["valid_loss"] for m in members]),
            "valid_losses": [m["valid_loss"] for m in members],
            "alpha_calibration": members[0].get("alpha_calibration"),
        }
        for key in ("regime/norm_saturated", "regime/gate_saturated", "copying_gain"):
            values = [m[key] for m in members if key in m]
            if values:
                entry[key] = _mean(values)
        for base in BASELINES:
            gaps = [m[f"gap_vs_{base}"] for m in members if f"gap_vs_{base}" in m]
            if gaps:
                entry[f"gap_vs_{base}"] = _mean(gaps)
                entry[f"gaps_vs_{base}"] = gaps
            key = f"gap_by_third_vs_{base}"
            thirds = [m[key] for m in members if key in m]
            if thirds:
                entry[key] = [_mean(list(t)) for t in zip(*thirds)]
        out.append(entry)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def score_verma(rows: list[dict]) -> dict:
    """How often the diagnostic's prediction matched the sign of the final gap, per baseline."""
    out = {}
    for base in BASELINES:
        cells = [
            r
            for r in rows
            if "regime/verma_predicts_squashing_ahead" in r and f"gap_vs_{base}" in r
        ]
        right = sum(
            (r["regime/verma_predicts_squashing_ahead"] >= 0.5) == (r[f"gap_vs_{base}"] < 0)
            for r in cells
        )
        out[base] = {"right": right, "cells": len(cells)}
    return out


def markdown(summary: list[dict], verma: dict) -> str:
    lines = [
        "| tokens/param | norm | seeds | valid loss | gap vs RMSNorm | gap vs RMSNorm+scalar "
        "| saturated at diagnostic | gate saturated | copying gain | α calibration c |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in summary:
        cells = [
            f"{e['tokens_per_param']:.2f}",
            e["norm"],
            str(len(e["seeds"])),
            f"{e['valid_loss']:.4f}",
            *(_signed(e.get(f"gap_vs_{base}")) for base in BASELINES),
            _percent(e.get("regime/norm_saturated")),
            _percent(e.get("regime/gate_saturated")),
            "" if "copying_gain" not in e else f"{e['copying_gain']:.2f}",
            " / ".join(f"{c:g}" for c in e["alpha_calibration"] or []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "\nCopying gain: loss on held-out text minus loss on its immediate repeat, in nats, at "
        "the end of the run (about 0: no in-context copying). α calibration c: the constants "
        "the run used for its attention / other norms (α = c / std of the input)."
    )
    lines += _thirds_table(summary)
    for base, score in verma.items():
        if score["cells"]:
            lines.append(
                f"\nVerma's heuristic (>= 36% saturated: DyT/Derf ahead) vs {base}: right in "
                f"{score['right']} of {score['cells']} cells."
            )
    return "\n".join(lines)


def _thirds_table(summary: list[dict]) -> list[str]:
    """Each gap in each third of the runs (training loss, mean of the seeds' paired gaps):
    whether a gap is there from the start or opens as the run goes on."""
    rows = [e for e in summary if any(f"gap_by_third_vs_{b}" in e for b in BASELINES)]
    if not rows:
        return []
    lines = [
        "\nThrough the run (training loss, each third of the run; paired by seed):\n",
        "| tokens/param | norm | vs RMSNorm: 1st / 2nd / 3rd "
        "| vs RMSNorm+scalar: 1st / 2nd / 3rd |",
        "|---:|---|---|---|",
    ]
    for e in rows:
        thirds = [
            " / ".join(_signed(g) for g in e.get(f"gap_by_third_vs_{base}", [])) or "–"
            for base in BASELINES
        ]
        lines.append(f"| {e['tokens_per_param']:.2f} | {e['norm']} | {thirds[0]} | {thirds[1]} |")
    return lines


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}%"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def plot(path: Path, rows: list[dict], summary: list[dict]) -> None:
    """One panel per baseline: each other norm's gap (%) against tokens per parameter (log x);
    the line joins the seed means, the dots are the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = [b for b in BASELINES if any(f"gap_vs_{b}" in e and e["norm"] != b for e in summary)]
    if not bases:
        return  # no norm next to a baseline: nothing to draw
    fig, axes = plt.subplots(1, len(bases), figsize=(5.5 * len(bases), 4.2), squeeze=False)
    axes = axes[0]
    for ax, base in zip(axes, bases):
        for i, norm in enumerate(n for n in dict.fromkeys(r["norm"] for r in rows) if n != base):
            color = f"C{i}"
            points = [e for e in summary if e["norm"] == norm and f"gap_vs_{base}" in e]
            xs = [e["tokens_per_param"] for e in points]
            ax.plot(xs, [e[f"gap_vs_{base}"] for e in points], "-o", color=color, label=norm)
            for e in points:
                gaps = e[f"gaps_vs_{base}"]
                ax.scatter([e["tokens_per_param"]] * len(gaps), gaps, color=color, s=12, alpha=0.5)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens per parameter")
        ax.set_title(f"validation loss gap to {base}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("gap (%), below 0: ahead of the baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(output: Path, rows: list[dict], meta: dict, wall_s: float) -> None:
    from megadyt.atomic import atomic_write_text

    add_gaps(rows)
    summary = summarize(rows)
    verma = score_verma(rows)
    cells_wall = sum(r.get("wall_s", 0.0) for r in rows)
    record = {
        "meta": meta,
        "machine": cpu_machine(),
        "date": datetime.date.today().isoformat(),
        "wall_s_this_invocation": round(wall_s, 1),
        "wall_s_all_cells": round(cells_wall, 1),
        "cells": rows,
        "summary": summary,
        "verma_heuristic": verma,
    }
    atomic_write_text(output / "ladder.json", json.dumps(record, indent=1) + "\n")
    table = markdown(summary, verma)
    atomic_write_text(output / "ladder.md", table + "\n")
    plot(output / "ladder.png", rows, summary)  # not written when no gap can be drawn
    print(table)
    print(
        f"\nwall time: {wall_s / 3600:.2f} h this invocation, {cells_wall / 3600:.2f} h of cell "
        f"training in all; {output / 'ladder.json'}, ladder.md, ladder.png"
    )
