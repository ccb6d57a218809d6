"""α calibration at the start of a fresh run (`model.alpha_init: calibrate`), and its record.

Runs on the plain model, before DeepSpeed wraps it: every rank still holds its whole TP shard
(no ZeRO-3 partitioning yet), so setting α is a plain write. The calibration batch is global
samples 0 .. micro_batch_size-1 on every data-parallel rank, so the measured statistics do not
depend on the parallel layout. A resumed run never gets here: its α comes from the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megadyt.atomic import atomic_write_text
from megadyt.config.schema import Config
from megadyt.model import norm_modules, norm_scalars
from megadyt.model.counting import count_parameters
from megadyt.norms.alpha import calibration_for_run_length
from megadyt.norms.calibration import CalibratedAlpha, calibrate_alpha, match_alpha
from megadyt.norms.registry import norm_entry
from megadyt.training.data import collate
from megadyt.training.engine import whole_parameters
from megadyt.training.run.layout import RunDir


def wants_calibration(cfg: Config) -> bool:
    return cfg.model.alpha_init == "calibrate" and norm_entry(cfg.model.norm).squashing


def planned_tokens_per_param(cfg: Config) -> float:
    """Tokens the run will train on (train.steps full batches) per parameter of the model."""
    return cfg.train.steps * cfg.tokens_per_step / count_parameters(cfg.model).total


@dataclass(frozen=True)
class CalibrationConstants:
    """The c of α = c / std(input) per role, and where they came from."""

    attention: float
    other: float
    final: float
    source: str  # "config", or the run-length rule and the planned tokens per parameter

    def for_role(self, role: str) -> float:
        return {"attention": self.attention, "final": self.final}.get(role, self.other)


def calibration_constants(cfg: Config) -> CalibrationConstants:
    """The config's constants, with "auto" resolved by the run-length rule for this run's
    planned tokens per parameter (megadyt.norms.alpha)."""
    m = cfg.model
    tokens_per_param = planned_tokens_per_param(cfg)
    rule_attention, rule_other = calibration_for_run_length(tokens_per_param)
    auto = "auto" in (m.alpha_calibration_attention, m.alpha_calibration_other)
    attention, other = m.alpha_calibration_attention, m.alpha_calibration_other
    attention = rule_attention if attention == "auto" else float(attention)
    other = rule_other if other == "auto" else float(other)
    final = other if m.alpha_calibration_final is None else m.alpha_calibration_final
    source = f"run-length rule, {tokens_per_param:.3g} tokens/param planned" if auto else "config"
    return CalibrationConstants(attention, other, final, source)


def calibrate_model(
    cfg: Config, model: torch.nn.Module, train_data, match_rmsnorm: bool = False
) -> list[CalibratedAlpha]:
    """Set every DyT/Derf α of `model` from one forward pass over the calibration batch: c/std
    of each norm's input with the config's constants, or (`match_rmsnorm`, for a model
    converted from RMSNorm) with each norm's c fitted to the RMSNorm it replaces."""
    batch = collate(train_data, range(cfg.train.micro_batch_size))
    group = parallel_state.get_tensor_model_parallel_group() if cfg.parallel.sp else None
    was_training = model.training
    model.eval()
    norms, forward = norm_modules(model), lambda: model(batch["tokens"])
    try:
        if match_rmsnorm:
            return match_alpha(norms, forward, cfg.model.norm_eps, group)
        return calibrate_alpha(norms, forward, calibration_constants(cfg).for_role, group)
    finally:
        model.train(was_training)


def save_calibration(run: RunDir, cfg: Config, records: list[CalibratedAlpha]) -> Path:
    """The run's calibration.json: the constants, the measured input std and α of every norm."""
    path = run.calibration
    constants = calibration_constants(cfg)
    payload = {
        "samples": f"global samples 0..{cfg.train.micro_batch_size - 1}",
        "alpha_calibration_attention": constants.attention,
        "alpha_calibration_other": constants.other,
        "alpha_calibration_final": constants.final,
        "constants_from": constants.source,
        "norms": [r.to_dict() for r in records],
    }
    atomic_write_text(path, json.dumps(payload, indent=1))
    return path


def describe(records: list[CalibratedAlpha]) -> str:
    """One log line: α per norm, e.g. 'layer0.attention 9.87, layer0.ffn 3.12, ...'."""
    return ", ".join(f"{r.name} {r.alpha:g}" for r in records)


def log_calibration(
    engine, norm_names: set[str], run: RunDir, cfg: Config, records, writer
) -> None:
    """Calibrated α: a console line, the run's calibration.json (rank 0) and the step-0 scalars
    read back from the engine (after any ZeRO partitioning: gathered for the read)."""
    if dist.get_rank() == 0:
        path = save_calibration(run, cfg, records)
        writer.message(f"calibrated α ({path}): {describe(records)}")
    small = [p for n, p in engine.module.named_parameters() if n in norm_names]
    with whole_parameters(engine, small):
        scalars = norm_scalars(engine.module)
    writer.log(0, {**scalars, "train/tokens": 0.0})
