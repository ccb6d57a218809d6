"""The LLaMA recipe's optimizer pieces: AdamW parameter groups and the LR schedule.

The schedule is a pure function of the step, so resuming needs nothing but the step count:
linear warmup over min(2000, steps // 20) steps (unless configured), then cosine decay to
`min_lr_ratio` × peak at the last step.
"""

from __future__ import annotations

import math

import torch

from megadyt.config.schema import TrainConfig


def warmup_steps(train: TrainConfig) -> int:
    if train.warmup_steps is not None:
        return train.warmup_steps
    return min(2000, train.steps // 20)


def lr_at(step: int, train: TrainConfig) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    warmup = warmup_steps(train)
    peak, floor = train.lr, train.lr * train.min_lr_ratio
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    decay_steps = max(1, train.steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def parameter_groups(
    model: torch.nn.Module, norm_names: set[str], decay_norm_params: bool, weight_decay: float
) -> list[dict]:
    """AdamW groups. Norm parameters (γ, β, α, s) and the embedding scalar are decayed only when
    `decay_norm_params` (the paper's code decays everything)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name in norm_names and not decay_norm_params else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
