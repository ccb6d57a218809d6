"""Split a full (TP=1) state dict into tensor-parallel shards and merge shards back.

megatron-core tags every TP-split parameter with `tensor_model_parallel`, `partition_dim` and
`partition_stride`; a weight is cut into tp×stride chunks along `partition_dim` and rank r owns
chunks r, r+tp, ... (stride 2 is the SwiGLU fc1: [gate; up]). `shard_tensor` and `merge_tensor`
are the exact inverse of each other and of megatron-core's own CPU initialisation, so they serve
checkpoint export (TP=n -> TP=1) and tests that start TP=2 from TP=1 weights.
"""

from __future__ import annotations

import torch


def tp_layout(model: torch.nn.Module) -> dict[str, tuple[int, int] | None]:
    """name -> (partition_dim, stride) for TP-split parameters, None for replicated ones."""
    layout = {}
    for name, param in model.named_parameters():
        if getattr(param, "tensor_model_parallel", False):
            layout[name] = (param.partition_dim, getattr(param, "partition_stride", 1))
        else:
            layout[name] = None
    return layout


def shard_tensor(full: torch.Tensor, dim: int, stride: int, rank: int, tp: int) -> torch.Tensor:
    chunks = torch.chunk(full, tp * stride, dim=dim)
    return torch.cat(chunks[rank::tp], dim=dim).clone()


def merge_tensor(shards: list[torch.Tensor], dim: int, stride: int) -> torch.Tensor:
    tp = len(shards)
    per_rank = [torch.chunk(s, stride, dim=dim) for s in shards]
    ordered = [per_rank[r][k] for k in range(stride) for r in range(tp)]
    return torch.cat(ordered, dim=dim)


def shard_state_dict(
    full: dict[str, torch.Tensor], model: torch.nn.Module, rank: int, tp: int
) -> dict[str, torch.Tensor]:
    """This rank's slice of a full parameter dict, for `model` (a TP-`tp` model)."""
    out = {}
    for name, split in tp_layout(model).items():
        tensor = full[name]
        out[name] = tensor.clone() if split is None else shard_tensor(tensor, *split, rank, tp)
    return out
