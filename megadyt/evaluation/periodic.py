"""Evaluation of the model being trained, for periodic evaluation inside the training loop.

`evaluate_model(engine.module, cfg, ["offline"], limit=100)` scores the in-memory TP=1 model with
lm-eval and returns TensorBoard-ready scalars; the model's train/eval mode is restored.
"""

from __future__ import annotations

import torch

from megadyt.config import Config
from megadyt.evaluation.harness import evaluate
from megadyt.evaluation.lm import MegadytLM
from megadyt.evaluation.offline import using_cache_dir


def evaluate_model(
    model: torch.nn.Module,
    cfg: Config,
    tasks: list[str],
    limit: int | None,
    batch_size: int = 8,
) -> dict[str, float]:
    """{"eval/<task>": headline score, "eval/average": accuracy average} for an in-memory model.

    `tasks` holds suite or task names (e.g. ["offline"] or ["stdlib_nextline"]); tasks that cannot
    load are skipped (logged as warnings). The model must be TP=1 (full-vocabulary logits).
    """
    was_training = model.training
    try:
        lm = MegadytLM(model=model, cfg=cfg, batch_size=batch_size)
        with using_cache_dir(cfg.data.cache_dir):
            report, _ = evaluate(lm, tasks, limit=limit)
    finally:
        model.train(was_training)
    return report.scalars()
