"""Evaluation across tensor-parallel ranks: TP rank 0 drives lm-eval, the others follow.

Every forward of a TP model is a collective over its TP group, so all ranks must run the same
forward at the same time, while lm-eval (task loading, request building, scoring) runs on one
rank only. TP rank 0 broadcasts each batch before running its forward; the other ranks wait in
`follow()` for the next batch, run the same forward, and return when rank 0 `release()`s them.
The vocabulary-parallel logits are gathered on every rank (megatron-core's gather along the last
dim), so rank 0 scores full-vocabulary log-probs, as at TP=1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

OP_END, OP_FORWARD = 0, 1


class TPForward:
    """The model call of an evaluation process, whatever its TP size (1: a plain call)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        self.model, self.device = model, device
        initialized = parallel_state.model_parallel_is_initialized()
        self.tp = parallel_state.get_tensor_model_parallel_world_size() if initialized else 1
        self.leads = not initialized or parallel_state.get_tensor_model_parallel_rank() == 0
        self._broken = False
        if self.tp > 1:
            self.group = parallel_state.get_tensor_model_parallel_group()
            self.src = parallel_state.get_tensor_model_parallel_src_rank()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits [b, s, V] of token ids [b, s] (TP rank 0; the others run it in follow())."""
        if self.tp > 1:
            self._send(OP_FORWARD, batch)
        try:
            return self._forward(batch)
        except BaseException:
            # the others are inside this forward's collectives, not waiting for a message:
            # release() must not send one; they end when this process does (torchrun)
            self._broken = True
            raise

    def follow(self) -> None:
        """TP ranks other than 0: run each forward rank 0 announces, until it releases us."""
        while True:
            header = torch.empty(3, dtype=torch.long, device=self.device)
            dist.broadcast(header, self.src, group=self.group)
            if int(header[0]) == OP_END:
                return
            shape = (int(header[1]), int(header[2]))
            batch = torch.empty(shape, dtype=torch.long, device=self.device)
            dist.broadcast(batch, self.src, group=self.group)
            with torch.no_grad():
                self._forward(batch)

    def release(self) -> None:
        """TP rank 0, once lm-eval is done (or failed between forwards): end the other ranks'
        follow()."""
        if self.tp > 1 and not self._broken:
            self._send(OP_END, None)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch)
        if self.tp > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
        return logits

    def _send(self, op: int, batch: torch.Tensor | None) -> None:
        shape = tuple(batch.shape) if batch is not None else (0, 0)
        header = torch.tensor([op, *shape], dtype=torch.long, device=self.device)
        dist.broadcast(header, self.src, group=self.group)
        if batch is not None:
            dist.broadcast(batch.contiguous(), self.src, group=self.group)
