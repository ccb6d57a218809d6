"""Distributed start-up reads the launcher's environment and leaves no trace of its own."""

from __future__ import annotations

import os

from megadyt.parallel.distributed import (
    LaunchEnv,
    destroy_distributed,
    init_distributed,
    launcher_variables,
)

LAUNCHER_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_single_process_launcher_variables_do_not_leak(monkeypatch):
    """DeepSpeed needs RANK/LOCAL_RANK/... even for one process; they are provided only while it
    builds its engine, or every subprocess started later would believe torchrun launched it."""
    for key in LAUNCHER_KEYS:
        monkeypatch.delenv(key, raising=False)
    init_distributed(tp=1)
    try:
        assert [k for k in LAUNCHER_KEYS if k in os.environ] == []
        with launcher_variables():
            assert os.environ["LOCAL_RANK"] == "0" and os.environ["WORLD_SIZE"] == "1"
        assert [k for k in LAUNCHER_KEYS if k in os.environ] == []
    finally:
        destroy_distributed()


def test_torchrun_and_slurm_environments_are_parsed():
    torchrun = LaunchEnv.from_environ(
        {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "7"}
    )
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.launcher) == (
        3,
        8,
        1,
        "torchrun",
    )
    slurm = LaunchEnv.from_environ(
        {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1", "MASTER_ADDR": "n2"}
    )
    assert (slurm.rank, slurm.world_size, slurm.local_rank, slurm.launcher) == (5, 16, 1, "slurm")
