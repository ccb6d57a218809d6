"""Evaluation inside the training loop: validation loss, and zero-shot tasks when configured.

The zero-shot scorer is passed in (`megadyt train` passes `megadyt.evaluation.periodic
.ZeroShot()`), so the training package never imports the evaluation package, which sits
above it. Every rank calls the scorer together; it returns the same scores on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.parallel.distributed import from_rank0, rank0_verdict
from megadyt.training.cadence import Cadence
from megadyt.training.data import collate
from megadyt.training.engine import gradient_accumulation_steps
from megadyt.training.metrics import MetricsWriter
from megadyt.training.run.layout import RunDir, task_set_label
from megadyt.training.step import loss_of, mean_over_dp, micro_batch_indices


class ZeroShotScorer(Protocol):
    """Zero-shot scores of the in-memory model (this rank's shard), as {"eval/<task>": score}."""

    def resolve(self, tasks: list[str], cfg: Config) -> None:
        """Raise a MegadytError naming every task that cannot load here."""

    def __call__(
        self, model: torch.nn.Module, cfg: Config, tasks: list[str], limit: int | None
    ) -> dict[str, float]:
        """The periodic scores."""

    def table(
        self,
        model: torch.nn.Module,
        cfg: Config,
        tasks: list[str],
        limit: int | None,
        step: int,
        path: Path,
    ) -> dict[str, float]:
        """The scores, also written as the results file `path` of checkpoint `step`."""


def configured_tasks(cfg: Config) -> list[str]:
    """Every zero-shot suite or task the run evaluates (periodic and final), once each."""
    t = cfg.train
    return list(dict.fromkeys([*t.zero_shot_tasks, *t.final_zero_shot_tasks]))


def require_scorer(cfg: Config, zero_shot: ZeroShotScorer | None) -> None:
    if configured_tasks(cfg) and zero_shot is None:
        raise MegadytError(
            "train.zero_shot_tasks or train.final_zero_shot_tasks is set but no zero-shot "
            "scorer was given to train(); run `megadyt train`, or pass "
            "zero_shot=megadyt.evaluation.periodic.ZeroShot()"
        )


def resolve_zero_shot_tasks(cfg: Config, zero_shot: ZeroShotScorer | None) -> None:
    """Before the first step: every configured task must load here (rank 0 checks; every rank
    gets its verdict, so a refusal is the same one-line error everywhere)."""
    require_scorer(cfg, zero_shot)
    tasks = configured_tasks(cfg)
    if tasks:
        rank0_verdict(lambda: zero_shot.resolve(tasks, cfg))


class Evaluator:
    def __init__(self, cfg: Config, valid_data, zero_shot: ZeroShotScorer | None = None) -> None:
        require_scorer(cfg, zero_shot)
        self.cfg, self.valid_data, self.zero_shot = cfg, valid_data, zero_shot
        self.cadence = Cadence(cfg.train)

    @torch.no_grad()
    def validation_loss(self, engine) -> float | None:
        """Mean loss over train.eval_iters global batches of the validation set (wrapping)."""
        if self.valid_data is None or len(self.valid_data) == 0:
            return None
        engine.eval()
        losses = []
        for it in range(self.cfg.train.eval_iters):
            for micro in range(gradient_accumulation_steps(self.cfg)):
                indices = [
                    i % len(self.valid_data) for i in micro_batch_indices(it, micro, self.cfg)
                ]
                losses.append(loss_of(engine, collate(self.valid_data, indices)).item())
        return mean_over_dp(losses)

    def run_due(self, step: int, engine, writer: MetricsWriter, tokens: float) -> None:
        """Whatever evaluation is due after 1-based `step`, logged at that step."""
        t = self.cfg.train
        if self.cadence.validates(step):
            valid = self.validation_loss(engine)
            if valid is not None:
                writer.log(step, {"valid/loss": valid, "train/tokens": tokens})
                writer.message(f"step {step}: validation loss {valid:.4f}")
        if self.cadence.scores_zero_shot(step):
            try:
                scores = self.zero_shot(
                    engine.module, self.cfg, t.zero_shot_tasks, t.zero_shot_limit
                )
            except MegadytError as exc:  # agreed by every rank; a score is not worth the run
                writer.message(f"megadyt: warning: step {step}: {exc}; training goes on")
                return
            writer.log(step, {**scores, "train/tokens": tokens})
            writer.message(
                f"step {step}: zero-shot "
                + ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in scores.items())
            )

    def final_table(self, step: int, engine, writer: MetricsWriter, tokens: float) -> None:
        """The run's final evaluation (train.final_zero_shot_tasks) of its last checkpoint,
        unless its results file exists already (a rerun of a complete run)."""
        t = self.cfg.train
        path = RunDir(self.cfg.run.dir).final_table(step, t.final_zero_shot_tasks)
        if path is None or from_rank0(path.is_file()):
            return
        label = task_set_label(t.final_zero_shot_tasks)
        writer.message(f"step {step}: final zero-shot evaluation ({label})")
        tasks, limit = t.final_zero_shot_tasks, t.final_zero_shot_limit
        try:
            scores = self.zero_shot.table(engine.module, self.cfg, tasks, limit, step, path)
        except MegadytError as exc:  # rank 0's failure, agreed by every rank: training is done
            writer.message(
                f"megadyt: warning: step {step}, final table: {exc}; the run is complete, and "
                "`megadyt eval --final` (run by the launch scripts) retries the table"
            )
            return
        final = {"final/" + k.split("/", 1)[1]: v for k, v in scores.items()}
        writer.log(step, {**final, "train/tokens": tokens})
        average = scores.get("eval/average")
        shown = f"average {100 * average:.2f}" if average is not None else "no accuracy average"
        writer.message(f"step {step}: final zero-shot table ({label}, {shown}) written to {path}")
