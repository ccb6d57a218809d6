"""The LLaMA recipe's optimizer pieces: AdamW parameter groups and the LR schedule.

The schedule is a pure function of the step, so resuming needs nothing but the step count:
linear warmup over min(2000, steps // 20) steps (unless configured), then cosine decay to
`min_lr_ratio` × peak at the last step.
"""

from __future__ import annotations

import math

import torch

from megadyt.config.schema import TrainConfig
from megadyt.model import norm_parameter_names, norm_scalar_parameter_names


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


def undecayed_parameter_names(model: torch.nn.Module, train: TrainConfig) -> set[str]:
    """What AdamW does not decay: every norm parameter and the embedding scalar unless
    `decay_norm_params`; the squashing norms' α and s unless `decay_norm_scalars`."""
    names: set[str] = set()
    if not train.decay_norm_params:
        names.update(norm_parameter_names(model))
    if not train.decay_norm_scalars:
        names.update(norm_scalar_parameter_names(model))
    return names


def parameter_groups(model: torch.nn.Module, train: TrainConfig) -> list[dict]:
    """AdamW groups: `train.weight_decay` for everything but `undecayed_parameter_names`; the
    norms' α and s in groups of their own, carrying `lr_scale` (read where the LR is set),
    when `train.norm_scalar_lr_scale` is not 1."""
    undecayed = undecayed_parameter_names(model, train)
    scaled = set()
    if train.norm_scalar_lr_scale != 1.0:
        scaled = set(norm_scalar_parameter_names(model))
    buckets: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((name in undecayed, name in scaled), []).append(param)
    groups = []
    for (no_decay, lr_scaled), params in sorted(buckets.items()):
        group = {"params": params, "weight_decay": 0.0 if no_decay else train.weight_decay}
        if lr_scaled:
            group["lr_scale"] = train.norm_scalar_lr_scale
        groups.append(group)
    return groups
