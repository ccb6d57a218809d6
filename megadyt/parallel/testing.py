"""Run a function in N gloo processes: the multi-process test helper, reusable on NCCL.

`run_distributed(fn, world_size=2, **kwargs)` spawns processes with torchrun-style environment
variables, calls `fn(rank, world_size, **kwargs)` in each, and returns each rank's return value;
an exception in any rank fails the call with that rank's traceback.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from megadyt.parallel.launch_env import free_port


def _entry(rank: int, world_size: int, port: int, fn: Callable, kwargs: dict, queue) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    try:
        # pickled by value: shared-memory tensors would die with this process
        queue.put((rank, True, pickle.dumps(fn(rank, world_size, **kwargs))))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
    finally:
        from megadyt.parallel.distributed import destroy_distributed

        destroy_distributed()


def run_distributed(fn: Callable, world_size: int = 2, timeout: float = 300, **kwargs) -> list[Any]:
    """Call `fn(rank, world_size, **kwargs)` in `world_size` spawned processes."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world_size, port, fn, kwargs, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            try:
                rank, ok, value = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if dead:  # died without reporting (signal, os._exit): don't wait for the timeout
                    raise RuntimeError(
                        f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"ranks {sorted(set(range(world_size)) - set(results))} "
                        f"did not finish within {timeout} s"
                    )
                continue
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
