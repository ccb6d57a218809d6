"""Distributed start-up in one place: launcher environment, process group, parallel_state, seeds.

Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and, under a
bare `srun`, SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID). NCCL on CUDA, gloo without; the
CPU shims for megatron-core are installed only when CUDA is absent.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megadyt.config.validate import check_world_size
from megadyt.errors import MegadytError
from megadyt.parallel import cpu_shims, watchdog


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits, as told by the launcher."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "single"
    # SLURM job facts, set whenever the process runs inside an allocation (also under torchrun
    # started by launch/slurm/pretrain.sbatch); defaults outside SLURM.
    job_id: str | None = None  # SLURM_JOB_ID
    num_nodes: int = 1  # SLURM_JOB_NUM_NODES (or SLURM_NNODES)
    node_rank: int = 0  # SLURM_NODEID
    restart_count: int = 0  # SLURM_RESTART_COUNT: how often the job was requeued

    @property
    def requeued(self) -> bool:
        return self.restart_count > 0

    @staticmethod
    def _slurm_fields(env: dict[str, str]) -> dict:
        if "SLURM_JOB_ID" not in env:
            return {}
        return {
            "job_id": env["SLURM_JOB_ID"],
            "num_nodes": int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1"))),
            "node_rank": int(env.get("SLURM_NODEID", "0")),
            "restart_count": int(env.get("SLURM_RESTART_COUNT", "0")),
        }

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> LaunchEnv:
        env = dict(os.environ if environ is None else environ)
        try:
            if "RANK" in env and "WORLD_SIZE" in env:
                return cls(
                    rank=int(env["RANK"]),
                    world_size=int(env["WORLD_SIZE"]),
                    local_rank=int(env.get("LOCAL_RANK", "0")),
                    master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                    master_port=int(env.get("MASTER_PORT", "29500")),
                    launcher="torchrun",
                    **cls._slurm_fields(env),
                )
            if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
                if "MASTER_ADDR" not in env:
                    raise MegadytError(
                        "launched by srun without MASTER_ADDR: use launch/slurm/pretrain.sbatch, "
                        "or export MASTER_ADDR (first node) and MASTER_PORT before srun"
                    )
                return cls(
                    rank=int(env["SLURM_PROCID"]),
                    world_size=int(env["SLURM_NTASKS"]),
                    local_rank=int(env.get("SLURM_LOCALID", "0")),
                    master_addr=env["MASTER_ADDR"],
                    master_port=int(env.get("MASTER_PORT", "29500")),
                    launcher="slurm",
                    **cls._slurm_fields(env),
                )
        except ValueError as exc:
            raise MegadytError(f"launcher environment has a non-integer rank variable ({exc})")
        try:
            slurm = cls._slurm_fields(env)
        except ValueError as exc:
            raise MegadytError(f"launcher environment has a non-integer SLURM variable ({exc})")
        return cls(0, 1, 0, "127.0.0.1", _free_port(), "single", **slurm)


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def destroy_distributed() -> None:
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
    watchdog.forget_health_group()
    _SINGLE_PROCESS_VARIABLES.clear()
