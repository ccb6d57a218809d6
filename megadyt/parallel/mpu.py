"""megatron-core's parallel_state in the shape DeepSpeed's `mpu` argument expects.

DeepSpeed asks an mpu for model/tensor/data/pipeline rank, world size and group; with it, ZeRO
shards over the data-parallel group only and gradient clipping counts each TP-split parameter
once. parallel_state lacks the `get_model_parallel_*` names, hence this adapter.
"""

from __future__ import annotations

from megatron.core import parallel_state as ps


class MegatronMPU:
    """Forwards every getter DeepSpeed uses to megatron-core's parallel_state (no pipeline)."""

    # "model parallel" in DeepSpeed's sense is tensor parallel here (PP = 1)
    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)
    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)
