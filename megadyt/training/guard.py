"""The step guard: what the loop does about loss spikes and steps that could not be applied.

`train.spike_action` decides the response to a spike: "off" (not judged), "log" (an event, the
batch trains), "skip" (the spiking micro-batches are dropped) or "rollback" (also reload the last
checkpoint, continue at the batch after the offending one, and scale the LR). Rollbacks move the
data position and LR scale, which the guard owns and which go into every checkpoint, so a
resumed run continues exactly. Too many bad steps in a row, or too many rollbacks, stop the run.

Spike detection (`SpikeDetector`): a loss far above the recent running mean is a spike. The
detector sees one value per micro-batch, the micro-batch loss averaged over data-parallel
ranks (so every rank judges the same number and reaches the same verdict without extra
communication). Spikes are never added to the history, so one bad batch does not raise the bar
for the next. The history is part of the checkpoint: a resumed run judges exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megadyt.config.schema import TrainConfig
from megadyt.errors import MegadytError
from megadyt.training.metrics import MetricsWriter


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


class StepGuard:
    def __init__(self, train: TrainConfig, checkpoints: Path) -> None:
        self.cfg = train
        self.checkpoints = checkpoints  # named in the messages that stop a run
        self.detector = SpikeDetector(
            train.spike_window, train.spike_threshold_std, train.spike_min_history
        )
        # Set by rollbacks, saved in every checkpoint: step k trains on global batch
        # k + data_offset, at lr_at(k) * lr_scale.
        self.data_offset = 0
        self.lr_scale = 1.0
        self.rollbacks = 0
        self.skipped = 0
        self.consecutive_bad = 0

    # -- during a step -------------------------------------------------------------------------
    @property
    def drops_spikes(self) -> bool:
        """Whether a spiking micro-batch contributes a zero gradient instead of its own."""
        return self.cfg.spike_action in ("skip", "rollback")

    def judge(self, loss: float, finite: bool) -> Spike | None:
        """The verdict on one micro-batch's DP-mean loss; losses that are not spikes join the
        history (a spike never does, so one bad batch does not raise the bar for the next)."""
        spike = None
        if self.cfg.spike_action != "off" and finite:
            spike = self.detector.check(loss)
        if spike is None:
            self.detector.accept(loss)
        return spike

    def batch_of(self, step: int) -> int:
        """The global batch that 0-based `step` trains on."""
        return step + self.data_offset

    # -- after a step --------------------------------------------------------------------------
    def report_spikes(self, step: int, spikes: list[Spike], writer: MetricsWriter) -> None:
        for spike in spikes:
            z = spike.z if math.isfinite(spike.z) else 1e9
            writer.event(
                step + 1,
                "spike",
                {"spike/loss": spike.loss, "spike/z": z, "spike/running_mean": spike.mean},
                f"loss spike: {spike.describe()}; action: {self.cfg.spike_action}",
            )

    def wants_rollback(self, spikes: list[Spike]) -> bool:
        return bool(spikes) and self.cfg.spike_action == "rollback"

    def rollback(
        self, spike_step: int, load: Callable[[], dict | None], writer: MetricsWriter
    ) -> int | None:
        """Reload the last checkpoint (`load` returns its client state) after a spike in 0-based
        step `spike_step`. Returns the step to continue from, or None when there is no
        checkpoint to return to (the batch was dropped anyway)."""
        t = self.cfg
        if self.rollbacks >= t.max_rollbacks:
            raise MegadytError(
                f"loss spike in step {spike_step + 1} after {self.rollbacks} rollbacks "
                f"(train.max_rollbacks={t.max_rollbacks}); inspect the data near global batch "
                f"{self.batch_of(spike_step)}, lower train.lr, or raise train.max_rollbacks, "
                f"then rerun to resume from {self.checkpoints}"
            )
        next_batch = self.batch_of(spike_step) + 1
        keep = (self.detector.state_dict(), self.lr_scale * t.spike_lr_factor, self.rollbacks + 1)
        client = load()
        if client is None:
            writer.message(
                f"step {spike_step + 1}: no checkpoint to roll back to; the spiking batch was "
                "dropped and training goes on"
            )
            return None
        restored = int(client["step"])
        history, self.lr_scale, self.rollbacks = keep
        self.detector.load_state_dict(history)
        self.data_offset = next_batch - restored
        writer.event(
            restored,
            "rollback",
            {
                "spike/rollback_to_step": float(restored),
                "spike/data_offset": float(self.data_offset),
                "spike/lr_scale": self.lr_scale,
            },
            f"rolled back to step {restored} after a loss spike in step {spike_step + 1}; "
            f"data resumes at global batch {next_batch}, LR scale {self.lr_scale:g} "
            f"(rollback {self.rollbacks} of at most {t.max_rollbacks})",
        )
        return restored

    def record(
        self, step: int, loss: float, applied: bool, spikes: list, writer: MetricsWriter
    ) -> None:
        """Count a step that was not applied (an event); stop after train.max_bad_steps in a
        row. `step` is 1-based."""
        if applied:
            self.consecutive_bad = 0
            return
        self.skipped += 1
        self.consecutive_bad += 1
        dropped = spikes and math.isfinite(loss)
        reason = (
            "every micro-batch was dropped as a loss spike"
            if dropped
            else "non-finite loss or grad norm"
        )
        writer.event(
            step,
            "skipped_step",
            {"train/skipped_step": 1.0, "train/bad_loss": loss},
            f"{reason}; step skipped",
        )
        if self.consecutive_bad >= self.cfg.max_bad_steps:
            raise MegadytError(
                f"{self.consecutive_bad} consecutive skipped steps (up to step {step}: "
                f"{reason}); stopping. The last good checkpoint in {self.checkpoints} is "
                "intact: lower train.lr or check the data, then rerun to resume"
            )

    # -- checkpointed state --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "data_offset": self.data_offset,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "spike_history": self.detector.state_dict(),
            # so a resume neither forgets skipped steps nor restarts train.max_bad_steps' count
            # (prefixed: DeepSpeed keeps its own "skipped_steps" in the same dict)
            "guard_skipped_steps": self.skipped,
            "guard_consecutive_bad_steps": self.consecutive_bad,
        }

    def load_state_dict(self, client: dict) -> None:
        self.data_offset = int(client.get("data_offset", 0))
        self.lr_scale = float(client.get("lr_scale", 1.0))
        self.rollbacks = int(client.get("rollbacks", 0))
        self.skipped = int(client.get("guard_skipped_steps", 0))
        self.consecutive_bad = int(client.get("guard_consecutive_bad_steps", 0))
        self.detector.load_state_dict(client.get("spike_history", []))
