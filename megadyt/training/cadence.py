"""Which steps log, save and evaluate: one rule, `due`, read by the loop, the checkpointer and
the evaluator alike.

A step is due for a periodic action when it is a multiple of the action's interval or the
last step of its horizon. Logging and saving end with the last step this invocation trains
(`train.stop_at_step` can stop it before `train.steps`: that step is logged and saved, so the
next invocation resumes from it); evaluation ends with the run's final step, `train.steps`,
the point every run of a comparison reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

from megadyt.config.schema import TrainConfig


def due(step: int, interval: int, last: int) -> bool:
    """Whether 1-based `step` is a multiple of `interval` or the `last` step."""
    return step % interval == 0 or step == last


@dataclass(frozen=True)
class Cadence:
    train: TrainConfig

    @property
    def stop_at(self) -> int:
        """The last step this invocation trains."""
        t = self.train
        return min(t.steps, t.stop_at_step) if t.stop_at_step else t.steps

    def logs(self, step: int) -> bool:
        return due(step, self.train.log_interval, self.stop_at)

    def saves(self, step: int) -> bool:
        return due(step, self.train.save_interval, self.stop_at)

    def validates(self, step: int) -> bool:
        return due(step, self.train.eval_interval, self.train.steps)

    def diagnoses(self, step: int) -> bool:
        """The regime diagnostic's step (`train.regime_diagnostic_step`): once, not periodic."""
        return step == self.train.resolved_regime_diagnostic_step

    def scores_zero_shot(self, step: int) -> bool:
        t = self.train
        return bool(t.zero_shot_tasks) and due(step, t.zero_shot_interval, t.steps)
