"""Weights a single device can load, whatever layout trained them.

At each checkpoint the data-parallel rank 0 of every TP rank writes its weights file (named by
`RunDir`, under the step directory):
its TP shard of every parameter (gathered from ZeRO-3 partitions first), the TP layout
(partition dim and stride per parameter), and the run's config. `load_tp1_weights` merges the
shards into a TP=1 state dict; files are plain tensors and loaded with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import deepspeed
import torch
from megatron.core import parallel_state

from megadyt.atomic import atomic_output
from megadyt.config import Config, config_from_dict
from megadyt.errors import MegadytError
from megadyt.parallel.tp_shards import merge_tensor, tp_layout
from megadyt.training.checkpoint import verify_checkpoint
from megadyt.training.rundir import (
    WEIGHTS_DIR,
    resolve_checkpoint,
    weights_file,
    weights_files,
)


def save_tp_shard(engine, cfg: Config, tag_dir: Path) -> None:
    """Called on every rank (ZeRO-3 gathers are collective); DP rank 0 writes its TP shard."""
    module = engine.module
    params = list(module.parameters())
    zero3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, enabled=zero3):
        if parallel_state.get_data_parallel_rank() != 0:
            return
        state = {n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters()}
        payload = {
            "state": state,
            "layout": {n: list(s) if s else None for n, s in tp_layout(module).items()},
            "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "config": cfg.to_dict(),
        }
    out = weights_file(tag_dir, parallel_state.get_tensor_model_parallel_rank())
    with atomic_output(out) as tmp:
        torch.save(payload, tmp)


def load_tp1_weights(
    path: str | Path, verify: bool = True
) -> tuple[Config, dict[str, torch.Tensor]]:
    """(the run's config with parallel.tp=1, sp off; the merged full state dict).

    The weights files are checked against the checkpoint's manifest first, as a resume checks
    the whole checkpoint; `verify=False` reads them unchecked (the CLI's --no-verify)."""
    tag_dir = resolve_checkpoint(path)
    if verify:
        try:
            verify_checkpoint(tag_dir, only=WEIGHTS_DIR)
        except MegadytError as exc:
            raise MegadytError(f"{exc} (or pass --no-verify to read it unchecked)") from exc
    files = weights_files(tag_dir)
    if not files:
        raise MegadytError(f"checkpoint {tag_dir} has no {WEIGHTS_DIR}/tp_rank_*.pt files")
    shards = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    tp = shards[0]["tp"]
    if len(shards) != tp:
        raise MegadytError(f"checkpoint {tag_dir} has {len(shards)} of {tp} TP weight shards")
    merged = {}
    for name, split in shards[0]["layout"].items():
        parts = [s["state"][name] for s in shards]
        merged[name] = parts[0] if split is None else merge_tensor(parts, *split)
    cfg_dict = shards[0]["config"]
    cfg_dict["parallel"].update(tp=1, sp=False, zero_stage=0)
    return config_from_dict(cfg_dict), merged
