"""Loss-spike detection: a loss far above the recent running mean is a spike.

The detector sees one value per micro-batch, the micro-batch loss averaged over data-parallel
ranks (so every rank judges the same number and reaches the same verdict without extra
communication). Spikes are never added to the history, so one bad batch does not raise the bar
for the next. The history is part of the checkpoint: a resumed run judges exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Spike:
    loss: float
    mean: float
    std: float

    @property
    def z(self) -> float:
        """Standard deviations above the running mean (inf when the history is flat)."""
        return (self.loss - self.mean) / self.std if self.std > 0 else math.inf

    def describe(self) -> str:
        return f"loss {self.loss:.4f} is {self.z:.1f} std above the running mean {self.mean:.4f}"


class SpikeDetector:
    """Running mean/std over the last `window` accepted losses; `check` judges a new one."""

    def __init__(self, window: int, threshold_std: float, min_history: int) -> None:
        self.threshold_std = threshold_std
        self.min_history = min_history
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> Spike | None:
        """The spike verdict for `loss`; not a spike (None) until the history is long enough."""
        if len(self.history) < self.min_history or not math.isfinite(loss):
            return None
        mean = sum(self.history) / len(self.history)
        std = math.sqrt(sum((v - mean) ** 2 for v in self.history) / len(self.history))
        if loss > mean + self.threshold_std * std and loss > mean:
            return Spike(loss, mean, std)
        return None

    def accept(self, loss: float) -> None:
        if math.isfinite(loss):
            self.history.append(loss)

    def state_dict(self) -> list[float]:
        return list(self.history)

    def load_state_dict(self, history: list[float]) -> None:
        self.history.clear()
        self.history.extend(float(v) for v in history)
