"""Loading a checkpoint's model for evaluation: merged on one device, or one TP shard per rank.

Shared by the lm-eval model (`evaluation.lm`) and anything else that scores a checkpoint.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from megadyt.config import Config
from megadyt.data.tokenizer import Tokenizer, load_tokenizer
from megadyt.errors import MegadytError
from megadyt.model.llama import build_model
from megadyt.parallel.distributed import first_error, init_distributed, seed_everything
from megadyt.training.checkpoint.weights import load_into, load_tp1_weights, load_tp_shard


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device; auto/None: this process's CUDA device, else the CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return torch.device(device)


def load_checkpoint_model(
    checkpoint: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    verify: bool = True,
) -> tuple[torch.nn.Module, Config]:
    """(model in eval mode on `device`, its config) from any megadyt checkpoint, its weights
    checked against the manifest unless `verify` is False.

    In a TP=N process group (`init_distributed(tp=N)`, e.g. `megadyt eval --tp N` under
    torchrun), each rank loads its own shard of a checkpoint saved at TP=N; otherwise the
    shards are merged into one TP=1 model, and a single-process distributed state (TP=1) is
    initialised if none exists yet.
    """
    initialized = parallel_state.model_parallel_is_initialized()
    tp = parallel_state.get_tensor_model_parallel_world_size() if initialized else 1
    if tp == 1:
        cfg, state = load_tp1_weights(checkpoint, verify=verify)
        if not initialized:
            init_distributed(tp=1)
    else:  # one of `tp` evaluation ranks: this rank's shard only, nothing merged
        cfg, state = _load_own_shard(checkpoint, tp, verify)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, perform_initialization=False)
    load_into(model, state, f"checkpoint {checkpoint}")
    model = model.to(device=resolve_device(device), dtype=dtype)
    model.eval()
    return model, cfg


def _load_own_shard(checkpoint: str, tp: int, verify: bool):
    """This TP rank's (config, state); every rank gets the first rank's error, if any, so no
    rank goes on to wait for a peer that failed to load (each verifies only its own files)."""
    rank = parallel_state.get_tensor_model_parallel_rank()
    loaded, error = None, None
    try:
        loaded = load_tp_shard(checkpoint, rank, tp, verify=verify)
    except MegadytError as exc:
        error = f"TP rank {rank}: {exc}"
    error = first_error(error)
    if error:
        raise MegadytError(error)
    return loaded


def tokenizer_for(cfg: Config) -> Tokenizer:
    """The tokenizer the run trained with (`data.tokenizer`, built-in ones under data.cache_dir)."""
    return load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
