"""Evaluation across tensor-parallel ranks: TP rank 0 drives lm-eval, the others follow.

Every forward of a TP model is a collective over its TP group, so all ranks must run the same
forward at the same time, while lm-eval (task loading, request building, scoring) runs on one
rank only. TP rank 0 broadcasts each batch before running its forward; the other ranks wait in
`follow()` for the next batch, run the same forward, and return when rank 0 `release()`s them.
The vocabulary-parallel logits are gathered on every rank (megatron-core's gather along the last
dim), so rank 0 scores full-vocabulary log-probs, as at TP=1.

Inside a training job (`for_training`) the announcements go to every rank, from global rank 0:
the ranks of its TP group run each forward; under ZeRO-3 every rank does, since each forward
gathers its partitioned parameters from the whole data-parallel group (DeepSpeed's hooks). The
other ranks only listen, so none of them waits longer than lm-eval takes between two forwards.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

OP_END, OP_FORWARD = 0, 1


class TPForward:
    """The model call of an evaluation process, whatever its TP size (1: a plain call).

    `group` hears every forward from global rank `src` (default: the TP group, from its first
    rank); `forwards` says whether this rank runs them or only listens."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        group: dist.ProcessGroup | None = None,
        src: int = 0,
        forwards: bool = True,
    ) -> None:
        self.model, self.device, self.forwards = model, device, forwards
        initialized = parallel_state.model_parallel_is_initialized()
        self.tp = parallel_state.get_tensor_model_parallel_world_size() if initialized else 1
        if group is None and self.tp > 1:
            group = parallel_state.get_tensor_model_parallel_group()
            src = parallel_state.get_tensor_model_parallel_src_rank()
        self.group, self.src = group, src
        self.leads = dist.get_rank() == src if group is not None else True
        self._broken = False

    @classmethod
    def for_training(cls, model: torch.nn.Module, device: torch.device, zero3: bool) -> TPForward:
        """Inside a training job: rank 0 leads, every rank listens, and the ranks of rank 0's
        TP group run the forwards (every rank under ZeRO-3)."""
        if dist.get_world_size() == 1:
            return cls(model, device)
        lead_group = parallel_state.get_data_parallel_rank() == 0  # TP groups: consecutive ranks
        return cls(model, device, dist.group.WORLD, 0, forwards=zero3 or lead_group)

    @property
    def broken(self) -> bool:
        """Whether a forward failed on this rank: the others are still inside its collectives."""
        return self._broken

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits [b, s, V] of token ids [b, s] (the leader; the others run it in follow())."""
        if self.group is not None:
            self._send(OP_FORWARD, batch)
        try:
            return self._forward(batch)
        except BaseException:
            # the others are inside this forward's collectives, not waiting for a message:
            # release() must not send one; they end when this process does (torchrun)
            self._broken = True
            raise

    def follow(self) -> None:
        """Every rank but the leader: run (or only hear) each forward it announces, until it
        releases us."""
        while True:
            header = torch.empty(3, dtype=torch.long, device=self.device)
            dist.broadcast(header, self.src, group=self.group)
            if int(header[0]) == OP_END:
                return
            shape = (int(header[1]), int(header[2]))
            batch = torch.empty(shape, dtype=torch.long, device=self.device)
            dist.broadcast(batch, self.src, group=self.group)
            if self.forwards:
                with torch.no_grad():
                    self._forward(batch)

    def release(self) -> None:
        """The leader, once lm-eval is done (or failed between forwards): end the other ranks'
        follow()."""
        if self.group is not None and not self._broken:
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
