"""Glue from the config's data section to the trainer's (train, valid) token sources.

Built-in corpora are materialised by rank 0 first (others wait at a barrier), then every rank
opens the same megatron-core GPTDataset blend.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megadyt.config.schema import Config
from megadyt.data.builtin import resolve_data
from megadyt.data.datasets import build_datasets
from megadyt.data.tokenizer import load_tokenizer
from megadyt.parallel.distributed import device


def collate(dataset, indices) -> dict[str, torch.Tensor]:
    """Stack samples `indices` of `dataset` into tokens/labels/loss_mask on this rank's device."""
    samples = [dataset[i] for i in indices]
    dev = device()
    return {
        key: torch.stack([torch.as_tensor(s[key]) for s in samples]).to(dev)
        for key in ("tokens", "labels", "loss_mask")
    }


def build_train_valid(cfg: Config):
    if dist.get_rank() == 0:
        resolve_data(cfg.data)
    dist.barrier()
    _, tokenizer_path = resolve_data(cfg.data)
    tokenizer = load_tokenizer(tokenizer_path, cfg.data.cache_dir)
    t = cfg.train
    train_samples = t.steps * t.global_batch_size
    valid_samples = max(1, t.eval_iters * t.global_batch_size)
    train, valid, _ = build_datasets(cfg, tokenizer, (train_samples, valid_samples, 0))
    return train, valid
