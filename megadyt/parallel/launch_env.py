"""Where this process sits, as its launcher (torchrun, srun, or none) told it: torch-free, so
the command line can ask without importing torch.

Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and, under a
bare `srun`, SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from megadyt.errors import MegadytError


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
        return cls(0, 1, 0, "127.0.0.1", free_port(), "single", **slurm)


def free_port() -> int:
    """A TCP port free on this host right now (for a rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_rank(environ: dict[str, str] | None = None) -> int:
    """This process's global rank as the launcher set it; 0 when the environment is unusable
    (the caller is reporting an error and must not raise another)."""
    try:
        return LaunchEnv.from_environ(environ).rank
    except MegadytError:
        return 0
