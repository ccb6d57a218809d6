"""megatron-core's tensor-parallel linear layers, with the changes a compiled layer needs.

torch.compile (megadyt.training.compile) traces each transformer layer into one graph. Two
things in megatron-core 0.16's linear layers split that graph:
- `RowParallelLinear.forward` hands `tp_group=None` to its linear function, which looks the
  default group up and warns that passing it "will be mandatory soon"; the warning is a call
  torch.compile cannot put in a graph. `CompilableRowParallelLinear` passes its own group, the
  one the lookup returns.
- Under TP, `ColumnParallelLinear`'s linear function overlaps its backward communication with
  compute by launching it with `async_op=True`, which torch.compile cannot trace. Inside a
  compiled region `CompilableColumnParallelLinear` does the same communication through
  megatron-core's own region mappings instead: the sequence-parallel all-gather (reduce-scatter
  in backward), or the identity whose backward all-reduces the input gradient. The arithmetic
  is the same; the all-gathered input is kept for the weight gradient instead of being gathered
  again in backward. Eager runs keep megatron-core's overlapped path.
Parameters and checkpoints are those of megatron-core's classes.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)


class CompilableRowParallelLinear(RowParallelLinear):
    """RowParallelLinear that names its TP group to the linear function."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        if kwargs.get("tp_group") is None:
            kwargs["tp_group"] = self.tp_group
        return super()._forward_impl(input, weight, *args, **kwargs)


class CompilableColumnParallelLinear(ColumnParallelLinear):
    """ColumnParallelLinear whose TP communication is traceable inside a compiled region."""

    def _forward_impl(self, input, weight, *args, **kwargs):
        if torch.compiler.is_compiling():
            if kwargs.get("sequence_parallel"):
                input = gather_from_sequence_parallel_region(input, True, group=self.tp_group)
                kwargs["sequence_parallel"] = False
            elif kwargs.get("allreduce_dgrad"):
                input = copy_to_tensor_model_parallel_region(input, group=self.tp_group)
                kwargs["allreduce_dgrad"] = False
        return super()._forward_impl(input, weight, *args, **kwargs)
