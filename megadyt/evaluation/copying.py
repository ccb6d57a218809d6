"""In-context copying: the loss on held-out text, and on the same text repeated at once.

A model that has formed induction heads (Olsson et al. 2022, "In-context learning and
induction heads") predicts a repeat far better than the first reading; one that has not
predicts both alike. The regime ladder found that this, not the norm's saturation, separates
DyT from RMSNorm in long runs (docs/regime.md), so the probe is one function any checkpoint
can be scored with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from megadyt.errors import MegadytError

SKIP = 10  # tokens at the start of each copy not scored: too little context either way


@dataclass(frozen=True)
class CopyingScore:
    """Mean next-token loss (nats) on the first reading and on the repeat."""

    first: float
    repeat: float

    @property
    def gain(self) -> float:
        """How much the repeat is easier: about 0 without in-context copying."""
        return self.first - self.repeat

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "gain": self.gain}


def copying_score(model: torch.nn.Module, chunks: torch.Tensor, seq_length: int) -> CopyingScore:
    """Score `chunks` ([n, L] token ids, L > SKIP + 1) each followed by itself, in one batch.

    The first reading's losses are those of the chunk on its own (attention is causal); the
    repeat's are scored from its SKIP-th token on, as the first reading's are.
    """
    length = chunks.shape[1]
    if length <= SKIP + 1 or 2 * length > seq_length:
        raise MegadytError(
            f"copying probe: chunks of {length} tokens do not fit: each is read twice, so "
            f"use {SKIP + 2} to {seq_length // 2} tokens (half the model's seq_length)"
        )
    device = next(model.parameters()).device
    tokens = read_twice(chunks).to(device)
    with torch.no_grad():
        logits = model(tokens).float()
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    losses = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]  # losses[:, i] predicts i + 1
    first = losses[:, SKIP - 1 : length - 1].mean().item()
    repeat = losses[:, length + SKIP - 1 :].mean().item()
    return CopyingScore(first, repeat)


def read_twice(chunks: torch.Tensor) -> torch.Tensor:
    """Each chunk followed at once by itself: [n, L] -> [n, 2L]."""
    return torch.cat([chunks, chunks], dim=1)


def held_out_chunks(valid_dataset, count: int, length: int) -> torch.Tensor:
    """The first `length` tokens of the first `count` validation samples, as [count, length]."""
    if len(valid_dataset) < count:
        raise MegadytError(
            f"copying probe: {count} chunks asked for, the validation split has "
            f"{len(valid_dataset)} samples; ask for fewer or raise train.eval_iters"
        )
    rows = [torch.as_tensor(valid_dataset[i]["tokens"][:length]) for i in range(count)]
    return torch.stack(rows).long()
