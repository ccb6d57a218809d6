"""The pretraining loop. It never knows which norm it trains: the model comes from the config.

Order of a step: set the LR for this step, then for each micro-batch forward, check the loss is
finite on every rank, backward and `engine.step()` (DeepSpeed applies the update at the
accumulation boundary). Samples are addressed by global index (step × global batch + offset),
so the data seen does not depend on the data-parallel size, and resuming needs only the step.
"""

from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import yaml
from deepspeed.runtime.utils import clip_grad_norm_
from megatron.core import parallel_state

from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.model import build_model, norm_modules, norm_parameter_names
from megadyt.parallel.distributed import (
    device,
    init_distributed,
    launcher_variables,
    seed_everything,
)
from megadyt.parallel.mpu import MegatronMPU
from megadyt.parallel.watchdog import diagnose_collective_failure, is_collective_failure
from megadyt.training import checkpoint
from megadyt.training.calibrate import (
    calibrate_model,
    describe,
    save_calibration,
    wants_calibration,
)
from megadyt.training.data import collate
from megadyt.training.engine import (
    build_engine,
    gradient_accumulation_steps,
    use_bf16,
    whole_parameters,
)
from megadyt.training.export import save_tp_shard
from megadyt.training.metrics import MetricsLogger, flops_per_token, memory_gb, peak_tflops
from megadyt.training.optim import lr_at
from megadyt.training.saturation import SaturationMonitor
from megadyt.training.spikes import Spike, SpikeDetector


@dataclass
class TrainResult:
    first_step: int  # 0 for a fresh run, else the resumed step
    last_step: int
    losses: dict[int, float]  # step -> training loss (global batch mean)
    skipped_steps: int
    rollbacks: int = 0


class StepOutcome(NamedTuple):
    loss: float  # mean over micro-batches and data-parallel ranks (spikes included)
    grad_norm: float
    applied: bool  # False: non-finite, or every micro-batch dropped as a spike
    spikes: list[Spike]


def _check_same_config_on_all_ranks(cfg: Config) -> None:
    digest = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    bad = [r for r, d in enumerate(digests) if d != digests[0]]
    if bad:
        raise MegadytError(
            f"rank {bad[0]} has a different config from rank 0; launch every rank "
            "with the same --config and --set values"
        )


def micro_batch_indices(step: int, micro: int, cfg: Config) -> range:
    """Global sample indices of one micro-batch on this DP rank."""
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    mbs = cfg.train.micro_batch_size
    start = step * cfg.train.global_batch_size + (micro * dp + dp_rank) * mbs
    return range(start, start + mbs)


def loss_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    per_token = model(batch["tokens"], labels=batch["labels"]).float()
    mask = batch["loss_mask"].float()
    return (per_token * mask).sum() / mask.sum()


def _judge_loss(loss: torch.Tensor) -> tuple[float, bool]:
    """(mean of this micro-batch's loss over DP ranks, finite on every rank): one all-reduce.
    Summing over the world counts each DP rank's loss once per TP rank, hence the count."""
    finite = bool(torch.isfinite(loss).all())
    value = float(loss) if finite else 0.0
    t = torch.tensor([value, 1.0, 0.0 if finite else 1.0], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return (t[0] / t[1]).item(), t[2].item() == 0.0


def _mean_over_dp(values: list[float]) -> float:
    t = torch.tensor([sum(values), float(len(values))], dtype=torch.float64, device=device())
    dist.all_reduce(t, group=parallel_state.get_data_parallel_group(with_context_parallel=False))
    return (t[0] / t[1]).item()


class StopRequest:
    """SIGUSR1/SIGTERM (e.g. SLURM's `--signal` before the time limit, or a requeue) set a flag;
    at the end of the current step all ranks agree on it, save a checkpoint and exit cleanly."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test harnesses)
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class Trainer:
    """Holds the engine, data and logger for one run; `run()` trains to the configured end."""

    def __init__(self, cfg: Config, train_data, valid_data=None) -> None:
        self.cfg = cfg
        self.train_data, self.valid_data = train_data, valid_data
        self.rank0 = dist.get_rank() == 0
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        seed_everything(cfg.train.seed)
        model = build_model(cfg).to(device())
        self.norm_names = set(norm_parameter_names(model))
        # α is calibrated on the plain model before DeepSpeed wraps it; never on a resume.
        self.calibration = []
        if wants_calibration(cfg) and not checkpoint.has_checkpoint(self.ckpt_dir):
            self.calibration = calibrate_model(cfg, model, train_data)
        self.engine = build_engine(cfg, model, self.norm_names)
        t = cfg.train
        self.saturation = (
            SaturationMonitor(self.engine.module, t.saturation_patience)
            if t.saturation_monitor
            else None
        )
        self.last_norm_stats: dict[str, float] = {}
        self.gas = gradient_accumulation_steps(cfg)
        self.flops_per_token = flops_per_token(cfg)
        self.peak_tflops = peak_tflops(cfg)
        self.skipped = 0
        self.consecutive_bad = 0
        self.spikes = SpikeDetector(t.spike_window, t.spike_threshold_std, t.spike_min_history)
        # Set by rollbacks, saved in every checkpoint: step k trains on global batch
        # k + data_offset, at lr_at(k) * lr_scale.
        self.data_offset = 0
        self.lr_scale = 1.0
        self.rollbacks = 0

    # -- one optimizer step ------------------------------------------------------------------
    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, step: int) -> StepOutcome:
        """Run optimizer step `step` (0-based) on global batch `step + data_offset`."""
        self.engine.train()
        lr = lr_at(step, self.cfg.train) * self.lr_scale
        self._set_lr(lr)
        skipped_before = self.engine.skipped_steps
        own_clip = self.cfg.parallel.zero_stage == 0 and not use_bf16(self.cfg)
        drop_spikes = self.cfg.train.spike_action in ("skip", "rollback")
        judge = self.cfg.train.spike_action != "off"
        losses, spikes, finite, grad_norm = [], [], True, None
        sample_norms = self.saturation is not None and self._is_log_step(step + 1)
        if sample_norms:  # the first micro-batch's forward records every norm's input
            self.saturation.arm()
        for micro in range(self.gas):
            indices = micro_batch_indices(step + self.data_offset, micro, self.cfg)
            loss = loss_of(self.engine, collate(self.train_data, indices))
            dp_loss, micro_finite = _judge_loss(loss.detach())
            finite = finite and micro_finite
            spike = self.spikes.check(dp_loss) if judge and micro_finite else None
            if spike is not None:
                spikes.append(spike)
            else:
                self.spikes.accept(dp_loss)
            dropped = spike is not None and drop_spikes
            # a dropped micro-batch contributes a zero gradient; the others train as usual
            self.engine.backward(loss * 0.0 if dropped else loss)
            if own_clip and micro == self.gas - 1:
                grad_norm = float(
                    clip_grad_norm_(
                        self.engine.module.parameters(), self.cfg.train.grad_clip, mpu=MegatronMPU()
                    )
                )
                finite = finite and math.isfinite(grad_norm)
                if not finite:  # keep NaN out of the optimizer state
                    for p in self.engine.module.parameters():
                        if p.grad is not None:
                            p.grad.zero_()
            all_dropped = drop_spikes and len(spikes) == self.gas
            if not finite or all_dropped:
                # Never apply this step: with lr 0 AdamW leaves the weights as they are; ZeRO 1-3
                # also skip the update themselves when the grad norm is not finite.
                self._set_lr(0.0)
            self.engine.step()
            losses.append(loss.detach().item())
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
            grad_norm = float("nan") if grad_norm is None else float(grad_norm)
        applied = finite and self.engine.skipped_steps == skipped_before
        applied = applied and math.isfinite(grad_norm) and not all_dropped
        self.last_norm_stats = self.saturation.collect(device()) if sample_norms else {}
        return StepOutcome(_mean_over_dp(losses), grad_norm, applied, spikes)

    def _stop_at(self) -> int:
        """The last step this invocation trains (train.exit_interval can stop it early)."""
        t = self.cfg.train
        return min(t.steps, t.exit_interval) if t.exit_interval else t.steps

    def _is_log_step(self, step: int) -> bool:
        """Whether 1-based `step` is logged (the loop's own condition, before `applied`)."""
        return step % self.cfg.train.log_interval == 0 or step == self._stop_at()

    def client_state(self, step: int) -> dict:
        """What a checkpoint needs besides weights and optimizer to continue exactly."""
        return {
            "step": step,
            "data_offset": self.data_offset,
            "lr_scale": self.lr_scale,
            "rollbacks": self.rollbacks,
            "spike_history": self.spikes.state_dict(),
        }

    def restore(self, client: dict) -> int:
        self.data_offset = int(client.get("data_offset", 0))
        self.lr_scale = float(client.get("lr_scale", 1.0))
        self.rollbacks = int(client.get("rollbacks", 0))
        self.spikes.load_state_dict(client.get("spike_history", []))
        return int(client["step"])

    def rollback(self, spike_step: int, logger: MetricsLogger) -> int | None:
        """Reload the last checkpoint after a spike in step `spike_step` (0-based); data resumes
        at the batch after the offending one and the LR is scaled. Returns the step to continue
        from, or None when there is no checkpoint to return to (the batch was dropped anyway)."""
        t = self.cfg.train
        if self.rollbacks >= t.max_rollbacks:
            raise MegadytError(
                f"loss spike in step {spike_step + 1} after {self.rollbacks} rollbacks "
                f"(train.max_rollbacks={t.max_rollbacks}); inspect the data near global batch "
                f"{spike_step + self.data_offset}, lower train.lr, or raise train.max_rollbacks, "
                f"then rerun to resume from {self.ckpt_dir}"
            )
        next_batch = spike_step + self.data_offset + 1
        keep = (self.spikes.state_dict(), self.lr_scale * t.spike_lr_factor, self.rollbacks + 1)
        client = checkpoint.load_checkpoint(
            self.engine, self.ckpt_dir, t.resume_fallback, model=self.cfg.to_dict()["model"]
        )
        if client is None:
            logger.message(
                f"step {spike_step + 1}: no checkpoint to roll back to; the spiking batch was "
                "dropped and training goes on"
            )
            return None
        restored = int(client["step"])
        history, self.lr_scale, self.rollbacks = keep
        self.spikes.load_state_dict(history)
        self.data_offset = next_batch - restored
        logger.event(
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

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float | None:
        if self.valid_data is None or len(self.valid_data) == 0:
            return None
        self.engine.eval()
        losses = []
        for it in range(self.cfg.train.eval_iters):
            for micro in range(self.gas):
                indices = [
                    i % len(self.valid_data) for i in micro_batch_indices(it, micro, self.cfg)
                ]
                losses.append(loss_of(self.engine, collate(self.valid_data, indices)).item())
        return _mean_over_dp(losses)

    # -- the loop ------------------------------------------------------------------------------
    def _norm_scalars(self) -> dict[str, float]:
        """α and s of every DyT/Derf norm, and the embedding scalar (ZeRO-3 keeps such small
        parameters whole on every rank)."""
        out = {}
        for name, module in norm_modules(self.engine.module):
            for kind in ("alpha", "shift"):
                param = getattr(module, kind, None)
                if param is not None:
                    out[f"norm/{kind}/{name}"] = float(param.detach().float().reshape(-1)[0])
        for name, param in self.engine.module.named_parameters():
            if name.endswith("embedding_scale"):
                out["model/embedding_scale"] = float(param.detach().float().reshape(-1)[0])
        return out

    def save(self, step: int) -> None:
        def write_weights(tag_dir: Path) -> None:
            save_tp_shard(self.engine, self.cfg, tag_dir)

        try:
            checkpoint.save_checkpoint(
                self.engine,
                self.ckpt_dir,
                step,
                self.client_state(step),
                before_publish=write_weights,
                model=self.cfg.to_dict()["model"],
            )
        except checkpoint.CheckpointSaveError as exc:
            if self.cfg.train.on_save_error == "stop":
                raise
            if self.rank0:
                print(
                    f"megadyt: warning: {exc}; training continues (train.on_save_error=warn)",
                    flush=True,
                )

    def _log_calibration(self, logger: MetricsLogger) -> None:
        """Calibrated α: console line, run.dir/calibration.json and the step-0 scalars."""
        if self.rank0:
            path = save_calibration(self.run_dir, self.cfg, self.calibration)
            logger.message(f"calibrated α ({path}): {describe(self.calibration)}")
        small = [p for n, p in self.engine.module.named_parameters() if n in self.norm_names]
        with whole_parameters(self.engine, small):
            scalars = self._norm_scalars()  # what the engine holds, after any ZeRO partitioning
        logger.log(0, {**scalars, "train/tokens": 0.0})

    def run(self) -> TrainResult:
        """Train to the configured end; a hung or dead peer becomes a one-line error naming it."""
        try:
            return self._run()
        except RuntimeError as exc:
            if is_collective_failure(exc):
                raise diagnose_collective_failure(exc) from exc
            raise

    def _run(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.train
        client = checkpoint.load_checkpoint(
            self.engine, self.ckpt_dir, t.resume_fallback, model=cfg.to_dict()["model"]
        )
        first = self.restore(client) if client else 0
        logger = MetricsLogger(self.run_dir, self.rank0, t.steps, cfg.run.name or self.run_dir.name)
        if client:
            logger.message(f"resumed from {self.ckpt_dir / checkpoint.tag_for(first)}")
        elif self.calibration:
            self._log_calibration(logger)
        stop_at = self._stop_at()
        losses: dict[int, float] = {}
        tokens_per_step = t.global_batch_size * cfg.model.seq_length
        world = dist.get_world_size()
        window_start, window_steps, paused = time.perf_counter(), 0, 0.0
        step = first
        stop = StopRequest()
        stop.install()
        try:
            while step < stop_at:
                loss, grad_norm, applied, spikes = self.train_step(step)
                window_steps += 1
                for spike in spikes:
                    z = spike.z if math.isfinite(spike.z) else 1e9
                    logger.event(
                        step + 1,
                        "spike",
                        {"spike/loss": spike.loss, "spike/z": z, "spike/running_mean": spike.mean},
                        f"loss spike: {spike.describe()}; action: {t.spike_action}",
                    )
                if spikes and t.spike_action == "rollback":
                    pause_start = time.perf_counter()
                    restored = self.rollback(step, logger)
                    paused += time.perf_counter() - pause_start
                    if restored is not None:
                        step = restored
                        continue
                step += 1
                losses[step] = loss
                if not applied:
                    self.skipped += 1
                    self.consecutive_bad += 1
                    dropped = spikes and math.isfinite(loss)
                    reason = (
                        "every micro-batch was dropped as a loss spike"
                        if dropped
                        else "non-finite loss or grad norm"
                    )
                    logger.event(
                        step,
                        "skipped_step",
                        {"train/skipped_step": 1.0, "train/bad_loss": loss},
                        f"{reason}; step skipped",
                    )
                    if self.consecutive_bad >= t.max_bad_steps:
                        raise MegadytError(
                            f"{self.consecutive_bad} consecutive skipped steps (up to step "
                            f"{step}: {reason}); stopping. The last good checkpoint in "
                            f"{self.ckpt_dir} is intact: lower train.lr or check the data, then "
                            "rerun to resume"
                        )
                else:
                    self.consecutive_bad = 0
                if applied and (step % t.log_interval == 0 or step == stop_at):
                    elapsed = time.perf_counter() - window_start - paused  # training time only
                    tps = tokens_per_step * window_steps / elapsed
                    tflops = tps * self.flops_per_token / 1e12 / world
                    scalars = {
                        "train/loss": loss,
                        "train/lr": lr_at(step - 1, t) * self.lr_scale,
                        "train/grad_norm": grad_norm,
                        "train/tokens": step * tokens_per_step,
                        "train/tokens_per_s": tps,
                        "perf/tflops_per_device": tflops,
                        "perf/mfu": tflops / self.peak_tflops,
                        "perf/memory_gb": memory_gb(),
                        "train/skipped_steps_total": float(self.skipped),
                        **self._norm_scalars(),
                        **self.last_norm_stats,
                    }
                    logger.log(step, scalars)
                    alert = self.saturation and self.saturation.alert(step, self.last_norm_stats)
                    if alert:
                        logger.event(step, "saturation_warning", {}, f"warning: {alert}")
                    logger.progress(step, loss, tps, step - first)
                    window_start, window_steps, paused = time.perf_counter(), 0, 0.0
                pause_start = time.perf_counter()  # evaluation and saving are not throughput
                if step % t.eval_interval == 0 or step == t.steps:
                    valid = self.validation_loss()
                    if valid is not None:
                        logger.log(
                            step, {"valid/loss": valid, "train/tokens": step * tokens_per_step}
                        )
                        logger.message(f"step {step}: validation loss {valid:.4f}")
                if t.zero_shot_tasks and (step % t.zero_shot_interval == 0 or step == t.steps):
                    from megadyt.evaluation.periodic import evaluate_model

                    scores = evaluate_model(
                        self.engine.module, cfg, t.zero_shot_tasks, t.zero_shot_limit
                    )
                    logger.log(step, {**scores, "train/tokens": step * tokens_per_step})
                    logger.message(
                        f"step {step}: zero-shot "
                        + ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in scores.items())
                    )
                stop_requested = stop.agreed()  # a collective: every rank, every step
                if step % t.save_interval == 0 or step == stop_at or stop_requested:
                    self.save(step)
                paused += time.perf_counter() - pause_start
                if stop_requested:
                    logger.message(f"step {step}: stop signal received; checkpoint saved, exiting")
                    break
        finally:
            stop.uninstall()
            logger.close()
        return TrainResult(first, step, losses, self.skipped, self.rollbacks)


def save_run_config(cfg: Config) -> None:
    """config.yaml beside the checkpoints: the exact config this run used (rank 0, atomic)."""
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_text(
        run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    )


def train(cfg: Config, datasets=None) -> TrainResult:
    """Initialise distributed state, build data and engine, train. `datasets` (train, valid)
    overrides the config's data section (tests use it for synthetic token sources)."""
    env = init_distributed(cfg.parallel.tp, cfg.parallel.backend, cfg.parallel.timeout_minutes)
    cfg.validate(env.world_size)
    _check_same_config_on_all_ranks(cfg)
    if dist.get_rank() == 0:
        save_run_config(cfg)
    if datasets is None:
        from megadyt.training.data import build_train_valid

        datasets = build_train_valid(cfg)
    with launcher_variables():  # DeepSpeed's ZeRO-3 reads LOCAL_RANK during every forward
        return Trainer(cfg, *datasets).run()
