"""Weights a single device can load, whatever layout trained them.

At each checkpoint the data-parallel rank 0 of every TP rank writes its weights file (named by
`RunDir`, under the step directory): the TP layout (partition dim and stride per parameter) and
the run's config, and, where DeepSpeed's own files do not hold them, its TP shard of every
parameter (`keeps_weights_copy`):

- ZeRO 0-2: DeepSpeed's model-state file of each TP rank (`mp_rank_NN_model_states.pt`) holds
  that rank's whole module, so only the run's final save adds a copy; the weights of any other
  checkpoint are read from DeepSpeed's file, checked against the same manifest;
- ZeRO-3: DeepSpeed's files hold only partitions, so every save writes the gathered TP shards.

`load_tp1_weights` gives the TP=1 state as `MergedWeights`: the files are memory-mapped and
each tensor is merged from its shards when it is read, so an export that goes tensor by tensor
never holds the whole model. Every file is loaded with `weights_only=True`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import deepspeed
import torch
from megatron.core import parallel_state

from megadyt.atomic import atomic_output
from megadyt.config import Config, config_from_dict
from megadyt.errors import MegadytError
from megadyt.parallel.tp_shards import merge_tensor, tp_layout
from megadyt.training.checkpoint.safe_load import safe_load
from megadyt.training.checkpoint.store import verify_checkpoint, verify_listed
from megadyt.training.run.layout import (
    WEIGHTS_DIR,
    resolve_checkpoint,
    weights_file,
    weights_files,
)

# DeepSpeed's name for the model states of TP rank N at ZeRO 0-2 (written by DP rank 0)
DEEPSPEED_MODEL_STATES = "mp_rank_{:02d}_model_states.pt"


def keeps_weights_copy(cfg: Config, step: int) -> bool:
    """Whether the save of `step` writes the TP shards of the weights (see the module doc)."""
    return cfg.parallel.zero_stage == 3 or step == cfg.train.steps


def save_tp_shard(engine, cfg: Config, tag_dir: Path, with_weights: bool) -> None:
    """Called on every rank (ZeRO-3 gathers are collective); DP rank 0 writes its TP shard's
    layout, and its weights when `with_weights`."""
    module = engine.module
    params = list(module.parameters())
    zero3 = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, enabled=zero3 and with_weights):
        if parallel_state.get_data_parallel_rank() != 0:
            return
        payload = {
            "layout": {n: list(s) if s else None for n, s in tp_layout(module).items()},
            "tp": parallel_state.get_tensor_model_parallel_world_size(),
            "config": cfg.to_dict(),
        }
        if with_weights:
            payload["state"] = {
                n: p.detach().to("cpu", copy=True) for n, p in module.named_parameters()
            }
    out = weights_file(tag_dir, parallel_state.get_tensor_model_parallel_rank())
    with atomic_output(out) as tmp:
        torch.save(payload, tmp)


def load_into(model: torch.nn.Module, state, source: str) -> None:
    """Load a state (dict or MergedWeights) into `model`, all of it or a one-line error naming
    `source` (what the weights are, for the message) and the first names that do not fit."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing or unexpected:
        raise MegadytError(
            f"{source} does not fit the config's model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}; use the config it was saved (or imported) with"
        )


class MergedWeights(Mapping):
    """The TP=1 state of a checkpoint's TP shards (memory-mapped), each tensor merged when read:
    reading it twice merges twice. `dict(weights)` materialises the whole state."""

    def __init__(self, shards: list[dict]) -> None:
        self.shards, self.layout = shards, shards[0]["layout"]

    def __getitem__(self, name: str) -> torch.Tensor:
        split = self.layout[name]
        parts = [shard["state"][name] for shard in self.shards]
        return parts[0] if split is None else merge_tensor(parts, *split)

    def __contains__(self, name: object) -> bool:  # without merging (Mapping's would read it)
        return name in self.layout

    def __iter__(self) -> Iterator[str]:
        return iter(self.layout)

    def __len__(self) -> int:
        return len(self.layout)


def load_tp1_weights(path: str | Path, verify: bool = True) -> tuple[Config, MergedWeights]:
    """(the run's config with parallel.tp=1, sp off; the merged full state, read lazily).

    The weights files are checked against the checkpoint's manifest first, as a resume checks
    the whole checkpoint; `verify=False` reads them unchecked (the CLI's --no-verify)."""
    tag_dir = resolve_checkpoint(path)
    if verify:
        _verified(verify_checkpoint, tag_dir, only=WEIGHTS_DIR)
    files = weights_files(tag_dir)
    if not files:
        raise MegadytError(f"checkpoint {tag_dir} has no {WEIGHTS_DIR}/tp_rank_*.pt files")
    shards = [torch.load(f, map_location="cpu", weights_only=True, mmap=True) for f in files]
    tp = shards[0]["tp"]
    if len(shards) != tp:
        raise MegadytError(f"checkpoint {tag_dir} has {len(shards)} of {tp} TP weight shards")
    for rank, shard in enumerate(shards):
        _fill_weights(tag_dir, rank, shard, verify)
    return _eval_config(shards[0], tp=1), MergedWeights(shards)


def load_tp_shard(
    path: str | Path, tp_rank: int, tp: int, verify: bool = True
) -> tuple[Config, dict[str, torch.Tensor]]:
    """(the run's config at parallel.tp=`tp`, sp off; TP rank `tp_rank`'s state dict), for a
    process that evaluates as one of `tp` tensor-parallel ranks: it reads and verifies only
    its own files, and nothing is merged. The checkpoint must have been saved at TP=`tp`."""
    tag_dir = resolve_checkpoint(path)
    own = weights_file(tag_dir, tp_rank)
    if verify:
        _verified(verify_listed, tag_dir, [str(own.relative_to(tag_dir))])
    if not own.is_file():
        raise MegadytError(f"checkpoint {tag_dir} has no {own.relative_to(tag_dir)}")
    shard = torch.load(own, map_location="cpu", weights_only=True, mmap=True)
    if shard["tp"] != tp:
        raise MegadytError(
            f"checkpoint {tag_dir} was saved at tensor-parallel size {shard['tp']}; evaluate it "
            f"with --tp {shard['tp']} (or --tp 1, which merges the shards on one device)"
        )
    _fill_weights(tag_dir, tp_rank, shard, verify)
    return _eval_config(shard, tp=tp), shard["state"]


def _eval_config(shard: dict, tp: int) -> Config:
    """The run's config for evaluation: `tp` ranks, no sequence parallelism, no ZeRO."""
    cfg_dict = shard["config"]
    cfg_dict["parallel"].update(tp=tp, sp=False, zero_stage=0)
    return config_from_dict(cfg_dict)


def _verified(check, *args, **kwargs) -> None:
    """Run a manifest check; its error also names the way around it."""
    try:
        check(*args, **kwargs)
    except MegadytError as exc:
        raise MegadytError(f"{exc} (or pass --no-verify to read it unchecked)") from exc


def _fill_weights(tag_dir: Path, tp_rank: int, shard: dict, verify: bool) -> None:
    """Give a weights file without a copy (`keeps_weights_copy`) its TP rank's parameters
    from DeepSpeed's model-state file, checked against the manifest first."""
    if "state" in shard:
        return
    module_file = DEEPSPEED_MODEL_STATES.format(tp_rank)
    if verify:
        _verified(verify_listed, tag_dir, [module_file])
    shard["state"] = _module_weights(tag_dir / module_file, shard)


def _module_weights(path: Path, shard: dict) -> dict[str, torch.Tensor]:
    """One TP rank's parameters from DeepSpeed's model-state file (ZeRO 0-2)."""
    if not path.is_file():
        raise MegadytError(
            f"checkpoint file {path} is missing: this checkpoint keeps its weights in "
            "DeepSpeed's model-state files; restore it"
        )
    module = safe_load(path, map_location="cpu", mmap=True)["module"]
    missing = [n for n in shard["layout"] if n not in module]
    if missing:
        raise MegadytError(f"checkpoint file {path} lacks parameter {missing[0]}")
    return {n: module[n].detach() for n in shard["layout"]}
