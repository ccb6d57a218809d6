"""One optimizer step, and the sample addressing shared with validation.

Order of a step: set the LR for this step, then for each micro-batch forward, check the loss is
finite on every rank, backward and `engine.step()` (DeepSpeed applies the update at the
accumulation boundary). Samples are addressed by global index (batch × global batch + offset),
so the data seen does not depend on the data-parallel size, and resuming needs only the step.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
from deepspeed.runtime.utils import clip_grad_norm_
from megatron.core import parallel_state

from megadyt.config.schema import Config
from megadyt.parallel.distributed import device
from megadyt.parallel.mpu import MegatronMPU
from megadyt.training.data import collate
from megadyt.training.engine import gradient_accumulation_steps, use_bf16
from megadyt.training.guard import Spike, StepGuard


class StepOutcome(NamedTuple):
    loss: float  # mean over micro-batches and data-parallel ranks (spikes included)
    grad_norm: float
    applied: bool  # False: non-finite, or every micro-batch dropped as a spike
    spikes: list[Spike]


def micro_batch_indices(batch: int, micro: int, cfg: Config) -> range:
    """Global sample indices of one micro-batch of global batch `batch` on this DP rank."""
    dp = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    mbs = cfg.train.micro_batch_size
    start = batch * cfg.train.global_batch_size + (micro * dp + dp_rank) * mbs
    return range(start, start + mbs)


def loss_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    per_token = model(batch["tokens"], labels=batch["labels"]).float()
    mask = batch["loss_mask"].float()
    return (per_token * mask).sum() / mask.sum()


def judge_loss(loss: torch.Tensor) -> tuple[float, bool]:
    """(mean of this micro-batch's loss over DP ranks, finite on every rank): one all-reduce.
    Summing over the world counts each DP rank's loss once per TP rank, hence the count."""
    finite = bool(torch.isfinite(loss).all())
    value = float(loss) if finite else 0.0
    t = torch.tensor([value, 1.0, 0.0 if finite else 1.0], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return (t[0] / t[1]).item(), t[2].item() == 0.0


def mean_over_dp(values: list[float]) -> float:
    t = torch.tensor([sum(values), float(len(values))], dtype=torch.float64, device=device())
    dist.all_reduce(t, group=parallel_state.get_data_parallel_group(with_context_parallel=False))
    return (t[0] / t[1]).item()


class StepRunner:
    """Runs optimizer steps on one engine; the guard judges every micro-batch's loss."""

    def __init__(self, cfg: Config, engine, train_data, guard: StepGuard) -> None:
        self.cfg, self.engine, self.train_data, self.guard = cfg, engine, train_data, guard
        self.gas = gradient_accumulation_steps(cfg)
        # ZeRO-0 in fp32: DeepSpeed would discard the norm, so the step clips (and checks) it
        self.own_clip = cfg.parallel.zero_stage == 0 and not use_bf16(cfg)

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def _clip(self) -> float:
        params = self.engine.module.parameters()
        return float(clip_grad_norm_(params, self.cfg.train.grad_clip, mpu=MegatronMPU()))

    def _zero_grads(self) -> None:
        """Keep a non-finite gradient out of the optimizer state."""
        for p in self.engine.module.parameters():
            if p.grad is not None:
                p.grad.zero_()

    def run(self, batch: int, lr: float) -> StepOutcome:
        """One optimizer step on global batch `batch` at learning rate `lr`."""
        self.engine.train()
        self._set_lr(lr)
        skipped_before = self.engine.skipped_steps
        losses, spikes, finite, grad_norm = [], [], True, None
        for micro in range(self.gas):
            indices = micro_batch_indices(batch, micro, self.cfg)
            loss = loss_of(self.engine, collate(self.train_data, indices))
            dp_loss, micro_finite = judge_loss(loss.detach())
            finite = finite and micro_finite
            spike = self.guard.judge(dp_loss, micro_finite)
            if spike is not None:
                spikes.append(spike)
            dropped = spike is not None and self.guard.drops_spikes
            # a dropped micro-batch contributes a zero gradient; the others train as usual
            self.engine.backward(loss * 0.0 if dropped else loss)
            if self.own_clip and micro == self.gas - 1:
                grad_norm = self._clip()
                finite = finite and math.isfinite(grad_norm)
                if not finite:
                    self._zero_grads()
            all_dropped = self.guard.drops_spikes and len(spikes) == self.gas
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
        return StepOutcome(mean_over_dp(losses), grad_norm, applied, spikes)
