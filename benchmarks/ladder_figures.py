"""What the regime ladder reads from a finished cell's run directory besides its result: the
calibration constants, the regime diagnostic, the last logged saturation and gate figures, and
the training loss by thirds of the run (benchmarks/regime_ladder.py)."""

from __future__ import annotations

import json
from pathlib import Path

CALIBRATED = ("attention", "other")  # the roles whose c the report shows


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def run_figures(run_dir: Path) -> dict:
    """The calibration constants, the regime diagnostic and the last logged saturation/gate
    figures of a run."""
    path, calibration = run_dir / "metrics.jsonl", read_json(run_dir / "calibration.json")
    if not path.is_file():
        return {}
    diagnostic, last, losses = {}, {}, {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("event") == "regime_diagnostic":
            diagnostic = {"diagnostic_step": record["step"]}
            diagnostic.update({k: v for k, v in record.items() if k.startswith("regime/")})
        elif "loss" in record:
            last = record
            losses[record["step"]] = record["loss"]  # a rolled-back step's retry replaces it
    saturated = [v for k, v in last.items() if k.startswith("norm/saturated/")]
    final = {"final_gate_saturated": last.get("gate/saturated/mean")}
    if saturated:
        final["final_norm_saturated"] = sum(saturated) / len(saturated)
    if calibration:  # the squashing norms' c (attention, other): the run-length rule's choice
        final["alpha_calibration"] = [calibration[f"alpha_calibration_{r}"] for r in CALIBRATED]
    return {**diagnostic, **final, "train_loss_by_third": _by_third(losses)}


def _by_third(losses: dict[int, float]) -> list[float] | None:
    """The mean logged training loss over each third of the logged steps (cells of one budget
    log the same steps, and see the same batches per seed, so thirds pair across norms)."""
    values = [losses[step] for step in sorted(losses)]
    if len(values) < 3:
        return None
    third = len(values) // 3
    parts = [values[:third], values[third : 2 * third], values[2 * third :]]
    return [sum(part) / len(part) for part in parts]
