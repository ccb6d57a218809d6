"""Run one training as a subprocess and read its final validation loss; resumable.

A finished cell leaves `result.json` in its run dir and is skipped next time. A cell that was
interrupted (killed, or stopped early by a stop request that saved a checkpoint and exited 0)
has no result: running it again resumes its training from its last checkpoint (the trainer
does that by itself). A cell whose training fails (diverged, bad data) is recorded as
failed, so a rerun does not repeat it unless asked to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from megadyt.atomic import atomic_write_text
from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.training.run.layout import RunDir
from megadyt.training.run.provenance import describe, result_changes

RESULT_FILE = "result.json"
LOG_FILE = "train.log"


@dataclass
class CellResult:
    run_dir: str
    seed: int
    assignment: dict[str, str]
    status: str  # "done" or "failed"
    valid_loss: float | None
    detail: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def train_command(config: str, overrides: list[str], nproc: int) -> list[str]:
    """`megadyt train` for one cell: a plain process, or torchrun (through megadyt's wrapper,
    `megadyt.parallel.torchrun`) with `nproc` ranks."""
    sets = [arg for text in overrides for arg in ("--set", text)]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "megadyt.parallel.torchrun",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "megadyt",
        ]
    else:
        launcher = [sys.executable, "-m", "megadyt"]
    return [*launcher, "train", "--config", config, *sets]


def final_valid_loss(run_dir: Path, steps: int) -> float | None:
    """The validation loss logged at step `steps` in the run's metrics.jsonl, if there is one."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        return None
    loss = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if record.get("step") == steps and "valid/loss" in record:
            loss = float(record["valid/loss"])
    return loss


def read_result(run_dir: Path) -> CellResult | None:
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    return CellResult(**json.loads(path.read_text()))


def refuse_stale_result(run_dir: Path, cfg: Config) -> None:
    """A cell's result stands for the config it was trained with. One trained under another
    (an edited YAML, a changed default) is refused before anything runs, not reported as
    this config's result."""
    if read_result(run_dir) is None:
        return
    recorded = RunDir(run_dir).read_config()
    changes = result_changes(recorded, cfg.to_dict()) if recorded else {}
    if changes:
        raise MegadytError(
            f"{run_dir} holds a result trained with another config ({describe(changes)}); "
            "delete that cell to retrain it, or use another --output"
        )


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("megadyt: error:")]
    return (errors or lines or [""])[-1].strip()[:300]


def run_cell(
    config: str,
    overrides: list[str],
    assignment: dict[str, str],
    seed: int,
    run_dir: Path,
    steps: int,
    nproc: int = 1,
    retry_failed: bool = False,
) -> tuple[CellResult, bool]:
    """Train one cell unless it already has a result; returns (result, whether it ran now)."""
    previous = read_result(run_dir)
    if previous is not None and (previous.status == "done" or not retry_failed):
        return previous, False
    run_dir.mkdir(parents=True, exist_ok=True)
    cell_overrides = [
        *overrides,
        *(f"{k}={v}" for k, v in assignment.items()),
        f"train.seed={seed}",
        f"run.dir={run_dir}",
    ]
    log = run_dir / LOG_FILE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as out:
        out.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} sweep cell start\n")
        out.flush()
        code = subprocess.run(
            train_command(config, cell_overrides, nproc),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        ).returncode
    if code < 0 or code in (130, 137, 143):  # killed or interrupted: leave it resumable
        raise MegadytError(f"cell {run_dir} was interrupted (exit {code}); rerun to resume it")
    saved = RunDir(run_dir).latest_step()
    if code == 0 and saved < steps:  # a stop request (or stop_at_step) saved and exited 0
        raise MegadytError(
            f"cell {run_dir} stopped at step {saved} of {steps} with a checkpoint; rerun to "
            "resume it"
        )
    loss = final_valid_loss(run_dir, steps) if code == 0 else None
    if loss is None:
        detail = _last_line(log) if code else f"no validation loss at step {steps}"
        result = CellResult(str(run_dir), seed, assignment, "failed", None, detail)
    else:
        result = CellResult(str(run_dir), seed, assignment, "done", loss)
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=1))
    return result, True
