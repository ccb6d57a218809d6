"""Checkpoint loading without arbitrary unpickling.

DeepSpeed's own `TorchCheckpointEngine.load` calls `torch.load(weights_only=False)`, which
executes whatever a pickle says: a checkpoint copied from elsewhere could run code. Every file
megadyt reads back goes through `torch.load(weights_only=True)` instead, with only the few plain
DeepSpeed state types its checkpoints contain allowed in addition to tensors and containers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from megadyt.errors import MegadytError

# State types DeepSpeed writes into model/optimizer files (ZeRO 0-3, fp32/bf16/fp16).
ALLOWED_GLOBALS = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location=None, mmap: bool = False):
    """`torch.load` that refuses any pickled object outside tensors and ALLOWED_GLOBALS;
    `mmap`: tensors stay in the memory-mapped file until read (readers of a few tensors)."""
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()[0][:200]
        raise MegadytError(
            f"checkpoint file {path} holds a pickled object megadyt does not load ({detail}); "
            "only tensors and DeepSpeed's state types are accepted. Do not use checkpoints from "
            "an untrusted source; re-save it with megadyt, or start a new run.dir"
        ) from exc


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine with `load` through `safe_load`."""

    def load(self, path: str, map_location=None):
        return safe_load(path, map_location)


def make_checkpoint_loads_safe(engine) -> None:
    """Swap the engine's checkpoint engine for the safe one (same state, safe `load`)."""
    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise MegadytError(
            f"DeepSpeed checkpoint engine {type(current).__name__} is not supported by megadyt; "
            "remove the checkpoint engine settings from the DeepSpeed config"
        )
    current.__class__ = SafeTorchCheckpointEngine
