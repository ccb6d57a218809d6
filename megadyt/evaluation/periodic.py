"""Zero-shot evaluation of the model being trained: what `megadyt train` passes the trainer as
its scorer (`training.evaluator.ZeroShotScorer`).

Every rank calls in together, at any TP, sequence parallelism and ZeRO stage. Rank 0 runs
lm-eval on the in-memory model (its TP shard) and announces each forward to every rank
(`TPForward.for_training`): the ranks of its TP group run the forward with it, and under ZeRO-3
every rank does. The scores are what `megadyt eval --tp <training TP>` gives the same
checkpoint; rank 0's outcome (scores, or its error) reaches every rank. The model's train/eval
mode is restored afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from megadyt.config import Config
from megadyt.errors import MegadytError
from megadyt.evaluation.harness import EvalReport, evaluate
from megadyt.evaluation.lm import MegadytLM
from megadyt.evaluation.offline import using_cache_dir
from megadyt.evaluation.results import results_payload, write_results
from megadyt.evaluation.task_data import resolve_tasks
from megadyt.evaluation.tp_forward import TPForward
from megadyt.parallel.distributed import from_rank0
from megadyt.training.run.layout import RunDir, tag_for

T = TypeVar("T")
BATCH_SIZE = 8  # `megadyt eval --batch-size`'s default


class ZeroShot:
    """lm-eval's scores of an in-memory model inside a training job."""

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        self.batch_size = batch_size

    def resolve(self, tasks: list[str], cfg: Config) -> None:
        """Raise one line naming every task that cannot load here (rank 0, at start-up)."""
        resolve_tasks(tasks, cfg.data.cache_dir)

    def __call__(
        self, model: torch.nn.Module, cfg: Config, tasks: list[str], limit: int | None
    ) -> dict[str, float]:
        """{"eval/<task>": headline score, "eval/average": accuracy average} on every rank."""
        return self._lockstep(model, cfg, lambda lm: self._report(lm, tasks, limit).scalars())

    def table(
        self,
        model: torch.nn.Module,
        cfg: Config,
        tasks: list[str],
        limit: int | None,
        step: int,
        path: Path,
    ) -> dict[str, float]:
        """Score `tasks` and write the results file `path` for checkpoint `step` (rank 0), in
        the format of `megadyt eval --run-dir`; returns the scalars on every rank."""

        def score_and_write(lm: MegadytLM) -> dict[str, float]:
            start = time.perf_counter()
            report = self._report(lm, tasks, limit)
            if not report.scores:
                raise MegadytError(f"no task could be evaluated: {report.errors}")
            payload = results_payload(
                report,
                checkpoint=RunDir(cfg.run.dir).tag_dir(tag_for(step)),
                step=step,
                norm=cfg.model.norm,
                dtype=str(next(model.parameters()).dtype),
                tp=cfg.parallel.tp,
                limit=limit,
                num_fewshot=None,
                seconds=time.perf_counter() - start,
            )
            write_results(path, payload)
            return report.scalars()

        return self._lockstep(model, cfg, score_and_write)

    def _report(self, lm: MegadytLM, tasks: list[str], limit: int | None) -> EvalReport:
        with using_cache_dir(lm.cfg.data.cache_dir):
            report, _ = evaluate(lm, tasks, limit=limit)
        return report

    def _lockstep(
        self, model: torch.nn.Module, cfg: Config, on_rank0: Callable[[MegadytLM], T]
    ) -> T:
        """`on_rank0(lm)` on rank 0 while every other rank serves its forwards; its result (or
        its error, as a MegadytError) on every rank."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        forward = TPForward.for_training(model, device, zero3=cfg.parallel.zero_stage == 3)
        lm = MegadytLM(model=model, cfg=cfg, batch_size=self.batch_size, forward=forward)
        outcome, error = None, None
        try:
            if lm.leads:
                try:
                    outcome = on_rank0(lm)
                except Exception as exc:  # noqa: BLE001 - every rank must hear about it
                    if forward.broken:  # the others are inside that forward: nothing to say
                        raise
                    error = str(exc) if isinstance(exc, MegadytError) else repr(exc)
                finally:
                    lm.release()
            else:
                lm.follow()
        finally:
            model.train(was_training)
        outcome, error = from_rank0((outcome, error))
        if error:
            raise MegadytError(f"zero-shot evaluation failed on rank 0: {error}")
        return outcome


def evaluate_model(
    model: torch.nn.Module, cfg: Config, tasks: list[str], limit: int | None
) -> dict[str, float]:
    """The scores of an in-memory model (every rank of a training job calls it together)."""
    return ZeroShot()(model, cfg, tasks, limit)
