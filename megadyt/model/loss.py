"""The output layer's loss without the whole logits: linear + vocab-parallel cross entropy, chunked.

Why: megatron-core's path computes the logits [s, b, V/tp] of the whole micro-batch, and its
vocab-parallel cross entropy keeps an fp32 softmax of the same size for backward. At vocab 32,000
and 4 × 2048 tokens that is 1 GB each, the largest activation of a small model and the term
that limits the micro-batch at 7B. Here the tokens go through in chunks: the forward computes a
chunk's logits, its loss and log-sum-exp, and drops the logits; the backward recomputes them
chunk by chunk (one more output-layer matmul) and accumulates the gradients of the hidden states
and of the weight (in the weight's dtype, one rounding per chunk). Peak memory holds one chunk's
logits instead of all of them.

Under TP each rank holds a vocabulary slice of the weight, as megatron-core does: per chunk the
row max and the sum of exponentials are all-reduced over the TP group, and the target's logit
comes from the rank that owns the target id. The hidden states enter through megatron-core's
own mappings (gathered along the sequence under SP), whose backward sums the ranks' partial
input gradients. Logits and softmax are fp32 whatever the weight dtype, as in megatron-core.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import ColumnParallelLinear
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)

# A chunk's logits hold about this many elements at least (64 MiB in fp32), so each matmul is
# large enough to run at full speed; a micro-batch below it is one chunk ("auto" stays unfused).
MIN_CHUNK_LOGITS = 1 << 24


def chunk_tokens(tokens: int, hidden: int, vocab_shard: int) -> int:
    """Tokens per chunk: the power of two at which a chunk's logits hold about as many elements
    as the hidden states they come from (Liger-Kernel's rule), or MIN_CHUNK_LOGITS if more;
    rounded down, so a chunk's logits stay below that size."""
    by_hidden = -(-tokens * hidden // vocab_shard)
    by_floor = -(-MIN_CHUNK_LOGITS // vocab_shard)
    return min(tokens, 1 << (max(by_hidden, by_floor).bit_length() - 1))


def fused_loss_applies(setting: str, tokens: int, hidden: int, vocab_shard: int) -> bool:
    """Whether the loss takes the chunked path (`model.fused_loss`). "auto": exactly when the
    logits would take more than one chunk; a single chunk would only recompute the matmul."""
    if setting != "auto":
        return setting == "on"
    return chunk_tokens(tokens, hidden, vocab_shard) < tokens


def _all_reduce(t: torch.Tensor, op, group) -> None:
    if group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)


def _logits(hidden: torch.Tensor, weight: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """A chunk's logits in fp32, the matmul written into `buffer`: one buffer for all chunks of
    a pass, so a pass allocates (and on CPU page-faults) one chunk's worth, not one per chunk."""
    return torch.mm(hidden, weight.t(), out=buffer[: hidden.shape[0]]).float()


def _chunk_buffer(hidden: torch.Tensor, weight: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.empty(min(chunk, hidden.shape[0]), weight.shape[0], dtype=hidden.dtype,
                       device=hidden.device)  # fmt: skip


def _owned(local_target: torch.Tensor, vocab_shard: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of the rows whose target id is in this rank's slice, the column to read there)."""
    owned = (local_target >= 0) & (local_target < vocab_shard)
    return owned, torch.where(owned, local_target, 0)


def _chunk_loss(logits, local_target, group) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, log-sum-exp) per row of one chunk; `logits` is overwritten."""
    owned, column = _owned(local_target, logits.shape[1])
    row_max = logits.amax(dim=1)
    _all_reduce(row_max, dist.ReduceOp.MAX, group)
    picked = logits.gather(1, column[:, None]).squeeze(1).masked_fill_(~owned, 0.0)
    sums = torch.stack((logits.sub_(row_max[:, None]).exp_().sum(dim=1), picked))
    _all_reduce(sums, dist.ReduceOp.SUM, group)  # Σexp(logit − max), the target's logit
    log_sum_exp = sums[0].log_().add_(row_max)
    return log_sum_exp - sums[1], log_sum_exp


def _chunk_logits_grad(logits, log_sum_exp, local_target, grad_loss, dtype) -> torch.Tensor:
    """d loss / d logits = (softmax − one-hot(target)) · upstream, in `dtype`; `logits` is
    overwritten."""
    owned, column = _owned(local_target, logits.shape[1])
    probs = logits.sub_(log_sum_exp[:, None]).exp_()
    probs.scatter_add_(1, column[:, None], -owned.to(probs.dtype)[:, None])
    return probs.mul_(grad_loss[:, None]).to(dtype)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """loss[i] = logsumexp(x_i Wᵀ) − (x_i Wᵀ)[target_i] over the vocabulary of all TP ranks;
    see the module docstring. Only x, W, the targets and the per-token log-sum-exp are saved."""

    @staticmethod
    def forward(ctx, hidden, weight, target, vocab_start, chunk, group):
        local_target = target - vocab_start
        loss = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        log_sum_exp = torch.empty_like(loss)
        buffer = _chunk_buffer(hidden, weight, chunk)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _logits(hidden[rows], weight, buffer)
            loss[rows], log_sum_exp[rows] = _chunk_loss(logits, local_target[rows], group)
            del logits  # before the next chunk's are made: one chunk's logits live at a time
        ctx.save_for_backward(hidden, weight, local_target, log_sum_exp)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, local_target, log_sum_exp = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[:2]
        grad_loss = grad_loss.float()
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # Summed by addmm in the weight's dtype: one rounding per chunk, no fp32 copy of W
        grad_weight = torch.zeros_like(weight) if need_weight else None
        buffer = _chunk_buffer(hidden, weight, ctx.chunk)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            x = hidden[rows]
            g = _chunk_logits_grad(
                _logits(x, weight, buffer), log_sum_exp[rows], local_target[rows],
                grad_loss[rows], hidden.dtype,
            )  # fmt: skip
            if need_hidden:
                torch.mm(g, weight, out=grad_hidden[rows])
            if need_weight:
                grad_weight.addmm_(g.t(), x)
            del g
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    group=None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Per-token loss [T] (fp32) of hidden [T, H] through this rank's vocabulary slice `weight`
    [V/tp, H] of the output layer, for targets [T] of the whole vocabulary. `group` is the TP
    group (None: one rank); the gradient w.r.t. `hidden` is this rank's part, to be summed over
    the group by the caller's mapping. `chunk` (tokens) defaults to `chunk_tokens`."""
    vocab_shard = weight.shape[0]
    rank = dist.get_rank(group) if group is not None else 0
    if chunk is None:
        chunk = chunk_tokens(hidden.shape[0], hidden.shape[1], vocab_shard)
    return _ChunkedLinearCrossEntropy.apply(
        hidden, weight, target, rank * vocab_shard, chunk, group
    )


class LossOutputLayer(ColumnParallelLinear):
    """megatron-core's output layer with a second forward: given `labels` [s, b], the per-token
    loss [s, b] instead of the logits. The loss runs inside the layer's own call so that
    whatever wraps the layer (ZeRO-3's parameter gathering hooks) sees it as the layer's work."""

    def forward(self, input_, weight=None, runtime_gather_output=None, labels=None):
        if labels is None:
            return super().forward(input_, weight, runtime_gather_output)
        weight = self.weight if weight is None else weight
        if self.sequence_parallel:
            hidden = gather_from_sequence_parallel_region(input_, group=self.tp_group)
        else:
            hidden = copy_to_tensor_model_parallel_region(input_, group=self.tp_group)
        s, b, h = hidden.shape
        loss = linear_cross_entropy(
            hidden.reshape(s * b, h), weight, labels.reshape(s * b), self.tp_group
        )
        return loss.view(s, b), None
