"""CPU-only shims for megatron-core's CUDA assumptions. Never active when CUDA is present.

megatron-core 0.16 assumes CUDA in three places that matter for running the tiny configs on a
laptop or CI machine (measured on megatron-core 0.16.1):
  1. `torch.cuda.current_device()` is used as an allocation device (rotary embeddings, the
     sequence-parallel gather/scatter buffers, GlobalMemoryBuffer);
  2. the tensor-parallel RNG tracker and activation recompute save and restore CUDA generator
     states;
  3. weights must be initialised with `use_cpu_initialization=True` (set in model/llama.py).
`install()` answers (1) with "cpu" and (2) with the CPU generator. It is called by
`megadyt.parallel.distributed` and is a no-op when `torch.cuda.is_available()`.

DeepSpeed has one CPU assumption of its own: `skip_deepspeed_shm_comm()` below.
"""

from __future__ import annotations

import contextlib

import torch
from megatron.core.tensor_parallel import random as tp_random

_installed = False


class CpuRNGStatesTracker(tp_random.CudaRNGStatesTracker):
    """megatron-core's RNG tracker, forking the CPU generator instead of a CUDA one."""

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"rng seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        generator = torch.Generator().manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = tp_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise RuntimeError(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def cuda_absent() -> bool:
    return not torch.cuda.is_available()


def install() -> None:
    """Install the shims if (and only if) there is no CUDA device."""
    global _installed
    if _installed or not cuda_absent():
        return
    torch.cuda.current_device = _cpu_device  # type: ignore[assignment]
    tp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # model_parallel_cuda_manual_seed calls torch.cuda.manual_seed, a no-op without CUDA; its
    # tracker.reset()/add() then go to CpuRNGStatesTracker. Keep initialize_rng_tracker from
    # replacing our tracker with a CUDA one.
    tp_random.initialize_rng_tracker = _keep_cpu_tracker
    # Activation recompute (CheckpointFunction) saves and restores the "CUDA" generator state
    # around the recomputed forward; without CUDA that is the CPU generator.
    tp_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    tp_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    _installed = True


def _cpu_device() -> str:
    """What `torch.cuda.current_device()` answers without CUDA."""
    return "cpu"


@torch.compiler.substitute_in_graph(_cpu_device)
def _cpu_device_in_graph() -> str:
    """`_cpu_device` for torch.compile. It lists the functions under torch's names as graph
    ops (rebuilding that list at every init_process_group, after this shim is in place), and a
    graph op may not return a string: every sequence-parallel scatter inside a compiled layer
    split the graph. A substitute is traced as Python instead: the constant "cpu"."""
    return "cpu"


def _keep_cpu_tracker(*args, force_reset: bool = False, **kwargs) -> None:
    if force_reset or not isinstance(tp_random._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker):
        tp_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    tp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


SHM_COMM_OP = "deepspeed_shm_comm"


def skip_deepspeed_shm_comm() -> None:
    """Keep DeepSpeed's CPU accelerator from JIT-compiling its shared-memory all-reduce op.

    DeepSpeed builds it in every `init_distributed` on CPU (about a minute on 2 cores, once per
    install), yet only its inference all-reduce uses it. A build that is killed part-way leaves
    torch's extension lock file behind, and every later start-up then waits on it forever (this
    hung CI). Training never needs the op, so it is marked incompatible; gloo does the
    all-reduces. DeepSpeed documents `deepspeed.ops.__compatible_ops__` as one cached dict
    whose edits persist.
    """
    if not cuda_absent():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
