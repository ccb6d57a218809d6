"""The pretraining loop. It never knows which norm it trains: the model comes from the config.

The loop itself is short; its parts each live in their own module:
- `step.StepRunner`: one optimizer step over the micro-batches;
- `guard.StepGuard`: loss spikes (log, skip, roll back) and steps that could not be applied;
- `metrics.MetricsProcessor` / `MetricsWriter`: throughput figures, TensorBoard, metrics.jsonl;
- `evaluator.Evaluator`: validation loss, and zero-shot tasks through a scorer passed in;
- `checkpoint.checkpointer.Checkpointer`: when to save, what goes in, and resuming;
- `cadence.Cadence`: which steps log, save, validate, score and diagnose;
- `parallel.stop_signals.StopRequest`: SIGUSR1/SIGTERM/Ctrl-C become a save and a clean exit;
- `run.layout.RunDir`: where every file of the run lives; `run.session.open_run`: taking it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch.distributed as dist

from megadyt.config.schema import Config
from megadyt.config.validate import validate_config
from megadyt.model import build_model, norm_parameter_names, norm_scalars
from megadyt.parallel.distributed import (
    device,
    init_distributed,
    launcher_variables,
    seed_everything,
)
from megadyt.parallel.stop_signals import StopRequest
from megadyt.parallel.watchdog import diagnose_collective_failure, is_collective_failure
from megadyt.training.cadence import Cadence
from megadyt.training.calibrate import calibrate_model, log_calibration, wants_calibration
from megadyt.training.checkpoint import store
from megadyt.training.checkpoint.checkpointer import AfterPublish, Checkpointer
from megadyt.training.checkpoint.initial import initial_checkpoint, load_initial_weights
from megadyt.training.compile import compile_layers, eager
from megadyt.training.data import build_train_valid
from megadyt.training.engine import build_engine
from megadyt.training.evaluator import Evaluator, ZeroShotScorer, resolve_zero_shot_tasks
from megadyt.training.guard import StepGuard
from megadyt.training.metrics import MetricsProcessor, MetricsWriter
from megadyt.training.optim import lr_at
from megadyt.training.run.layout import RunDir
from megadyt.training.run.provenance import RunRecord
from megadyt.training.run.session import finished_step, open_run
from megadyt.training.saturation import SaturationMonitor
from megadyt.training.step import StepOutcome, StepRunner


@dataclass
class TrainResult:
    first_step: int  # 0 for a fresh run, else the resumed step
    last_step: int
    losses: dict[int, float]  # step -> training loss (global batch mean)
    skipped_steps: int
    rollbacks: int = 0
    stop_signal: str | None = None  # e.g. "SIGUSR1" when a stop request ended the run early


class Trainer:
    """Builds the engine and the loop's parts for one run; `run()` trains to the configured end."""

    def __init__(
        self,
        cfg: Config,
        train_data,
        valid_data=None,
        zero_shot: ZeroShotScorer | None = None,
        after_publish: AfterPublish | None = None,
        record: RunRecord | None = None,
        stop: StopRequest | None = None,
    ) -> None:
        t = cfg.train
        self.cfg, self.run_dir, self.record = cfg, RunDir(cfg.run.dir), record
        self.stop = stop if stop is not None else StopRequest()
        self.evaluator = Evaluator(cfg, valid_data, zero_shot)
        seed_everything(t.seed)
        model = build_model(cfg).to(device())
        self.norm_names = set(norm_parameter_names(model))
        # α is calibrated on the plain model before DeepSpeed wraps it; never on a resume, nor
        # on imported weights (a weights-only step 0, loaded here: they bring their own α).
        self.calibration = []
        self.initial = initial_checkpoint(self.run_dir)
        if self.initial is not None:
            load_initial_weights(model, self.initial, cfg.to_dict()["model"])
        elif wants_calibration(cfg) and not store.has_checkpoint(self.run_dir):
            self.calibration = calibrate_model(cfg, model, train_data)
        self.compilation = compile_layers(cfg, model)  # compiles lazily, in the first step
        self.engine = build_engine(cfg, model)
        self.guard = StepGuard(t, self.run_dir.checkpoints)
        self.steps = StepRunner(cfg, self.engine, train_data, self.guard)
        self.checkpointer = Checkpointer(cfg, self.engine, self.run_dir, after_publish)
        self.metrics = MetricsProcessor(cfg, dist.get_world_size())
        self.saturation = (
            SaturationMonitor(self.engine.module, t.saturation_patience)
            if t.saturation_monitor
            else None
        )
        self.last_norm_stats: dict[str, float] = {}
        self.cadence = Cadence(t)
        self.stop_at = self.cadence.stop_at

    def train_step(self, step: int) -> StepOutcome:
        """Run optimizer step `step` (0-based) on the guard's global batch for it; at a log
        step the first micro-batch's forward also records every norm's input statistics."""
        sample_norms = self.saturation is not None and (
            self.cadence.logs(step + 1) or self.cadence.diagnoses(step + 1)
        )
        if sample_norms:
            self.saturation.arm()
        lr = lr_at(step, self.cfg.train) * self.guard.lr_scale
        outcome = self.steps.run(self.guard.batch_of(step), lr)
        self.last_norm_stats = self.saturation.collect(device()) if sample_norms else {}
        return outcome

    def client_state(self, step: int) -> dict:
        """What a checkpoint needs besides weights and optimizer to continue exactly."""
        return {"step": step, **self.guard.state_dict()}

    def run(self) -> TrainResult:
        """Train to the configured end; a hung or dead peer becomes a one-line error naming it."""
        try:
            return self._run()
        except RuntimeError as exc:
            if is_collective_failure(exc):
                raise diagnose_collective_failure(exc) from exc
            raise

    def _run(self) -> TrainResult:
        client = self.checkpointer.load()
        first = int(client["step"]) if client else 0
        if client:
            self.guard.load_state_dict(client)
        if self.record is not None:  # every check has passed: now the run's record changes
            self.record.started(first if client else None)
        writer = self._open_writer(resumed=client is not None, first=first)
        step, losses = first, {}
        with contextlib.closing(writer):
            stopping = self._stop_before_training(step, writer)
            self.metrics.start_window()  # throughput counts from here, not from start-up
            if self.compilation is not None:
                self.compilation.mark()
            while step < self.stop_at and not stopping:
                outcome = self.train_step(step)
                self.metrics.step_done()
                report = self.compilation and self.compilation.first_report()
                if report:
                    writer.event(step + 1, "compiled", report.scalars(), report.line())
                self.guard.report_spikes(step, outcome.spikes, writer)
                if self.guard.wants_rollback(outcome.spikes):
                    with self.metrics.paused():
                        restored = self.guard.rollback(step, self.checkpointer.load, writer)
                    if restored is not None:
                        step = restored
                        continue
                step += 1
                losses[step] = outcome.loss
                stopping = self._after_step(step, outcome, writer, steps_here=step - first)
            if step >= self.cfg.train.steps:
                self._final_table(step, stopping, writer)
        return TrainResult(first, step, losses, self.guard.skipped, self.guard.rollbacks, stopping)

    def _stop_before_training(self, step: int, writer: MetricsWriter) -> str | None:
        """A stop request that came during start-up: nothing new to save."""
        stopping = self.stop.agreed()
        if stopping:
            writer.message(
                f"megadyt: {stopping} received during start-up: stopped at step {step} "
                "before training; nothing new to save"
            )
        return stopping

    def _after_step(
        self, step: int, outcome: StepOutcome, writer: MetricsWriter, steps_here: int
    ) -> str | None:
        """Everything due after optimizer step `step` (1-based): the guard's record, the log,
        the diagnostic, evaluation, and saving; returns the stop request all ranks agreed on."""
        self.guard.record(step, outcome.loss, outcome.applied, outcome.spikes, writer)
        if outcome.applied and self.cadence.logs(step):
            self._log(step, outcome, writer, steps_here)
        if self.saturation is not None and self.cadence.diagnoses(step):
            self.saturation.diagnose(step, self.last_norm_stats, writer)
        with self.metrics.paused():  # evaluation and saving are not throughput
            with eager() if self.compilation is not None else contextlib.nullcontext():
                self.evaluator.run_due(step, self.engine, writer, self.metrics.tokens_at(step))
            stopping = self.stop.agreed()  # a collective: every rank, every step
            saved = False
            if self.cadence.saves(step) or stopping:
                saved = self.checkpointer.save(step, self.client_state(step))
        if stopping:
            writer.message(self._stop_line(stopping, step, saved))
        return stopping

    def _final_table(self, step: int, stopping: str | None, writer: MetricsWriter) -> None:
        """The final zero-shot evaluation, once the last step is saved. A stop request that
        came first leaves it to the next start (the launch scripts run it); one that comes
        during it is honoured afterwards, when nothing is left to do."""
        if not stopping:
            self.evaluator.final_table(step, self.engine, writer, self.metrics.tokens_at(step))
        elif self.cfg.train.final_zero_shot_tasks:
            writer.message(
                "megadyt: the final zero-shot evaluation is left to the next start "
                "(`megadyt eval --final`; the launch scripts run it)"
            )

    def _stop_line(self, signal_name: str, step: int, saved: bool) -> str:
        """The one line a stop request ends the run with (rank 0 prints it)."""
        if saved:
            return (
                f"megadyt: {signal_name} received: stopped at step {step} with a checkpoint "
                "saved; the same command (or the requeued job) resumes from it"
            )
        latest = self.run_dir.latest_tag() or "nothing: the run starts over"
        return (
            f"megadyt: {signal_name} received: stopped at step {step}, but its checkpoint "
            f"could not be saved (see above); a resume starts from {latest}"
        )

    def _open_writer(self, resumed: bool, first: int) -> MetricsWriter:
        """The run's metrics writer, after saying how the run starts (resume or calibration)."""
        t, rank0 = self.cfg.train, dist.get_rank() == 0
        writer = MetricsWriter(
            self.run_dir, rank0, t.steps, self.cfg.run.name or self.run_dir.root.name
        )
        if resumed:
            writer.message(f"resumed from {self.checkpointer.tag_dir(first)}")
        elif self.initial is not None:
            writer.message(f"starting from the weights in {self.initial} with a new optimizer")
        elif self.calibration:
            log_calibration(
                self.engine, self.norm_names, self.run_dir, self.cfg, self.calibration, writer
            )
        return writer

    def _log(self, step: int, outcome: StepOutcome, writer: MetricsWriter, steps_here: int) -> None:
        """The log-step record: loss, LR, throughput, norm scalars and saturation statistics."""
        throughput = self.metrics.throughput()
        writer.log(
            step,
            {
                "train/loss": outcome.loss,
                "train/lr": lr_at(step - 1, self.cfg.train) * self.guard.lr_scale,
                "train/grad_norm": outcome.grad_norm,
                "train/tokens": self.metrics.tokens_at(step),
                **throughput,
                "train/skipped_steps_total": float(self.guard.skipped),
                **norm_scalars(self.engine.module),
                **self.last_norm_stats,
            },
        )
        alert = self.saturation and self.saturation.alert(step, self.last_norm_stats)
        if alert:
            writer.event(step, "saturation_warning", {}, f"warning: {alert}")
        writer.progress(step, outcome.loss, throughput["train/tokens_per_s"], steps_here)
        self.metrics.start_window()  # logging is not training time either


def train(
    cfg: Config,
    datasets=None,
    zero_shot: ZeroShotScorer | None = None,
    after_publish: AfterPublish | None = None,
    allow_config_change: bool = False,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Initialise distributed state, take the run, build data and engine, train. `datasets`
    (train, valid) overrides the config's data section (tests use it for synthetic token
    sources); `zero_shot` scores the zero-shot tasks (`megadyt train` passes lm-eval's);
    `allow_config_change` lets a resume change the schedule (`megadyt.training.run.provenance`);
    `stop` is a StopRequest its caller entered earlier (`megadyt train` does so before
    importing torch), else one is held for the duration of this call."""
    with contextlib.nullcontext(stop) if stop is not None else StopRequest() as held:
        return _train(cfg, datasets, zero_shot, after_publish, allow_config_change, held)


def _train(
    cfg: Config,
    datasets,
    zero_shot: ZeroShotScorer | None,
    after_publish: AfterPublish | None,
    allow_config_change: bool,
    stop: StopRequest,
) -> TrainResult:
    env = init_distributed(cfg.parallel.tp, cfg.parallel.backend, cfg.parallel.timeout_minutes)
    validate_config(cfg, env.world_size)
    resolve_zero_shot_tasks(cfg, zero_shot)  # before anything is built: a refusal is cheap
    with open_run(cfg, env.world_size, allow_config_change) as record:
        finished = finished_step(cfg)
        if finished is not None:
            return TrainResult(finished, finished, {}, 0)
        if datasets is None:
            datasets = build_train_valid(cfg)
        with launcher_variables():  # DeepSpeed's ZeRO-3 reads LOCAL_RANK during every forward
            trainer = Trainer(cfg, *datasets, zero_shot, after_publish, record, stop)
            result = trainer.run()
        if result.last_step >= cfg.train.steps:
            outcome = "completed"
        else:
            outcome = f"stopped by {result.stop_signal}" if result.stop_signal else "stopped"
        record.ended(result.last_step, outcome)
        return result
