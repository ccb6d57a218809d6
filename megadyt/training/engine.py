"""Wrap a megatron-core model in a DeepSpeed engine: ZeRO over the data-parallel group.

DeepSpeed owns data parallelism, gradient accumulation, ZeRO sharding, optional optimizer
offload, bf16 and gradient clipping; megatron-core's TP groups reach it through the mpu adapter.
"""

from __future__ import annotations

import contextlib

import deepspeed
import torch
from megatron.core import parallel_state

from megadyt.config.schema import Config
from megadyt.parallel.cpu_shims import skip_deepspeed_shm_comm
from megadyt.parallel.distributed import launcher_variables
from megadyt.parallel.mpu import MegatronMPU
from megadyt.training.checkpoint.safe_load import make_checkpoint_loads_safe
from megadyt.training.optim import parameter_groups


def use_bf16(cfg: Config) -> bool:
    if cfg.train.precision == "auto":
        return torch.cuda.is_available()
    return cfg.train.precision == "bf16"


def gradient_accumulation_steps(cfg: Config) -> int:
    dp = parallel_state.get_data_parallel_world_size()
    return cfg.train.global_batch_size // (cfg.train.micro_batch_size * dp)


def uses_deepspeed_cpu_adam(cfg: Config) -> bool:
    """Optimizer offload runs DeepSpeed's CPU Adam, a C++ op built on first use (~90 s), where it
    earns that: next to a GPU, whose optimizer step it moves to the CPU. Without CUDA the
    optimizer is on the CPU anyway, and torch's fused AdamW (the one used without offload)
    runs the offloaded update with no build."""
    return cfg.parallel.offload_optimizer and torch.cuda.is_available()


def deepspeed_config(cfg: Config) -> dict:
    t, p = cfg.train, cfg.parallel
    zero: dict = {"stage": p.zero_stage, "contiguous_gradients": True}
    if p.zero_stage >= 2:
        zero["overlap_comm"] = torch.cuda.is_available()
    if p.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg),
        # ZeRO-0 in fp32 clips but discards the norm; the trainer clips there itself (same
        # DeepSpeed routine) so the norm can be logged and checked before the update.
        "gradient_clipping": t.grad_clip if p.zero_stage > 0 or use_bf16(cfg) else 0.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": use_bf16(cfg), "check_grad_overflow": True},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "dump_state": False,
    }
    if p.offload_optimizer and not uses_deepspeed_cpu_adam(cfg):
        config["zero_force_ds_cpu_optimizer"] = False  # torch's AdamW, on purpose: see above
    if uses_deepspeed_cpu_adam(cfg):  # DeepSpeed's CPU Adam runs the offloaded update
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": [t.adam_beta1, t.adam_beta2],
                "eps": t.adam_eps,
                "weight_decay": t.weight_decay,
            },
        }
    return config


def build_engine(cfg: Config, model: torch.nn.Module):
    """deepspeed.initialize with the recipe's AdamW; returns the engine."""
    t = cfg.train
    groups = parameter_groups(model, t)
    optimizer = None
    if not uses_deepspeed_cpu_adam(cfg):
        optimizer = torch.optim.AdamW(
            groups,
            lr=t.lr,
            betas=(t.adam_beta1, t.adam_beta2),
            eps=t.adam_eps,
            weight_decay=t.weight_decay,
            fused=True,  # one kernel for the whole update, on CUDA and on CPU alike
        )
    skip_deepspeed_shm_comm()
    with launcher_variables():
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=groups if optimizer is None else None,
            config=deepspeed_config(cfg),
            mpu=MegatronMPU(),
        )
    if cfg.parallel.zero_stage == 0 and not use_bf16(cfg):
        # One data-parallel rank has nothing to average, but DeepSpeed would still flatten every
        # gradient into a bucket, all-reduce it over one rank and copy it back (5% of a 100M CPU
        # step). ZeRO stages and the bf16 optimizer do their own bookkeeping there: kept.
        engine.enable_backward_allreduce = parallel_state.get_data_parallel_world_size() > 1
    make_checkpoint_loads_safe(engine)
    return engine


def whole_parameters(engine, params: list[torch.nn.Parameter]):
    """Context in which `params` are whole on every rank, also under ZeRO-3 (which partitions
    them until a forward gathers them); a collective under ZeRO-3, a no-op otherwise."""
    if engine.zero_optimization_stage() != 3:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
