"""Distributed start-up in one place: process group, parallel_state, seeds.

Where this process sits comes from `launch_env.LaunchEnv` (torchrun's or SLURM's variables).
NCCL on CUDA, gloo without; the CPU shims for megatron-core are installed only when CUDA is
absent.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megadyt.config.validate import check_world_size
from megadyt.errors import MegadytError
from megadyt.parallel import cpu_shims, watchdog
from megadyt.parallel.launch_env import LaunchEnv

T = TypeVar("T")

# torchrun's variables as a single process would have them (filled by init_distributed)
_SINGLE_PROCESS_VARIABLES: dict[str, str] = {}


@contextlib.contextmanager
def launcher_variables():
    """torchrun's variables in os.environ for the duration of the block, for libraries that read
    them (DeepSpeed's engine) even in a single process. Only missing ones are set, and they are
    removed afterwards, so they never leak into child processes started later (which would
    believe torchrun had launched them)."""
    added = [k for k in _SINGLE_PROCESS_VARIABLES if k not in os.environ]
    os.environ.update({k: _SINGLE_PROCESS_VARIABLES[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def device() -> torch.device:
    """This rank's compute device."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(
    tp: int = 1,
    backend: str = "auto",
    timeout_minutes: float = 30,
    env: LaunchEnv | None = None,
) -> LaunchEnv:
    """Initialise torch.distributed and megatron-core's parallel_state (TP × DP)."""
    env = env or LaunchEnv.from_environ()
    on_cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if on_cuda:
        torch.cuda.set_device(env.local_rank)
    else:
        cpu_shims.install()
    check_world_size(env.world_size, tp)
    if env.launcher == "single":
        _SINGLE_PROCESS_VARIABLES.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR=env.master_addr,
            MASTER_PORT=str(env.master_port),
        )
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timeout,
        )
        watchdog.create_health_group(timeout)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tp, distributed_timeout_minutes=timeout_minutes
        )
    return env


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and megatron-core's TP RNG tracker (same seed on every rank)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def from_rank0(value):
    """Rank 0's `value` on every rank (a collective; `value` itself in a single process)."""
    if _world() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_verdict(action: Callable[[], T]) -> T:
    """`action()` on rank 0 only; its result on every rank, or its MegadytError raised on every
    rank, so a refusal is the same one line everywhere (a collective)."""
    result = None
    if _world() == 1 or dist.get_rank() == 0:
        try:
            result = (action(), None)
        except MegadytError as exc:
            result = (None, str(exc))
    value, error = from_rank0(result)
    if error:
        raise MegadytError(error)
    return value


def from_all_ranks(value) -> list:
    """Every rank's `value`, in rank order, on every rank (`[value]` in a single process)."""
    if _world() == 1:
        return [value]
    values = [None] * _world()
    dist.all_gather_object(values, value)
    return values


def first_error(error: str | None) -> str | None:
    """Did any rank fail: the lowest failing rank's message, or None when no rank did. The one
    way ranks agree on a failure (a collective; every rank gets the same answer and can act on
    it together, instead of one rank waiting for a peer that already gave up)."""
    return next((e for e in from_all_ranks(error) if e), None)


def max_over_ranks(value: float) -> float:
    """The largest of every rank's `value`, on every rank (a collective, a tensor all-reduce:
    cheap enough to run every step; `value` itself in a single process)."""
    if _world() == 1:
        return float(value)
    flag = torch.tensor([float(value)], device=device())
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item()


def destroy_distributed() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    watchdog.forget_health_group()
    _SINGLE_PROCESS_VARIABLES.clear()
