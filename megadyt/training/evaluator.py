"""Evaluation inside the training loop: validation loss, and zero-shot tasks when configured.

The zero-shot scorer is passed in (`megadyt train` passes `megadyt.evaluation.periodic
.evaluate_model`), so the training package never imports the evaluation package, which sits
above it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.training.cadence import Cadence
from megadyt.training.data import collate
from megadyt.training.engine import gradient_accumulation_steps
from megadyt.training.metrics import MetricsWriter
from megadyt.training.step import loss_of, mean_over_dp, micro_batch_indices

# (in-memory TP=1 model, config, task names, documents per task) -> {"eval/<task>": score}
ZeroShotScorer = Callable[[torch.nn.Module, Config, list[str], "int | None"], dict[str, float]]


class Evaluator:
    def __init__(self, cfg: Config, valid_data, zero_shot: ZeroShotScorer | None = None) -> None:
        if cfg.train.zero_shot_tasks and zero_shot is None:
            raise MegadytError(
                "train.zero_shot_tasks is set but no zero-shot scorer was given to train(); "
                "run `megadyt train`, or pass zero_shot=megadyt.evaluation.periodic.evaluate_model"
            )
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
            scores = self.zero_shot(engine.module, self.cfg, t.zero_shot_tasks, t.zero_shot_limit)
            writer.log(step, {**scores, "train/tokens": tokens})
            writer.message(
                f"step {step}: zero-shot "
                + ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in scores.items())
            )
