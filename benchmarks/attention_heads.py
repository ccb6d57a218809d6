"""Which attention heads copy: previous-token and induction scores of every head of a checkpoint.

    python benchmarks/attention_heads.py RUN_DIR [RUN_DIR ...] [--chunks 32] [--tokens 120]

Each held-out chunk (the run's own validation split, as the copying probe reads it) is followed
by itself. A head's previous-token score is its mean attention from each token of the first
copy to the token before it; its induction score, its mean attention from each token of the
repeat to the token after that token's first occurrence (Olsson et al. 2022): about 0 for a head
that does not copy, up to 1 for one that does nothing else. Also printed: the spread (standard
deviation) of each head's attention logits, to tell a head that cannot sharpen from one that
does not. Prints a table per run; --output FILE writes the scores as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch


def head_scores(model, chunks: torch.Tensor) -> list[dict]:
    """Per layer: lists over heads of previous-token score, induction score and logit spread."""
    from megadyt.evaluation.copying import read_twice

    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep_query_key(module, args, kwargs):  # megatron calls core_attention(q, k, v, mask, ...)
        captured.append((args[0].detach(), args[1].detach()))  # [s, b, heads, d], RoPE applied

    hooks = [
        module.register_forward_pre_hook(keep_query_key, with_kwargs=True)
        for name, module in model.named_modules()
        if name.endswith("self_attention.core_attention")
    ]
    length = chunks.shape[1]
    tokens = read_twice(chunks)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    total = tokens.shape[1]
    future = torch.ones(total, total, dtype=torch.bool).triu(1)
    layers = []
    for query, key in captured:
        query, key = query.permute(1, 2, 0, 3).float(), key.permute(1, 2, 0, 3).float()
        if key.shape[1] != query.shape[1]:  # grouped-query attention: one key per group
            key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
        logits = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
        probs = logits.masked_fill(future, float("-inf")).softmax(-1)
        heads = range(logits.shape[1])
        first = torch.arange(1, length)
        repeat = torch.arange(length + 1, total)
        layers.append(
            {
                "previous_token": probs[:, :, first, first - 1].mean((0, 2)).tolist(),
                "induction": probs[:, :, repeat, repeat - length + 1].mean((0, 2)).tolist(),
                "logit_std": [logits[:, h][:, ~future].std().item() for h in heads],
            }
        )
    return layers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--output", help="write the scores as JSON here")
    args = parser.parse_args(argv)

    from megadyt.evaluation.copying import held_out_chunks
    from megadyt.evaluation.loading import load_checkpoint_model
    from megadyt.training.data import build_train_valid

    record, chunks_of = {}, {}  # runs with one validation split share chunks
    for run in args.runs:
        model, cfg = load_checkpoint_model(run, "cpu", verify=False)
        seed = cfg.train.seed if cfg.data.valid_seed is None else None  # what picks the split
        data = (repr(cfg.data), cfg.model.seq_length, seed)
        if data not in chunks_of:
            _, valid = build_train_valid(cfg)
            chunks_of[data] = held_out_chunks(valid, args.chunks, args.tokens)
        layers = head_scores(model, chunks_of[data])
        record[run] = layers
        print(run)
        for index, layer in enumerate(layers):
            row = [" ".join(f"{v:.2f}" for v in layer[k]) for k in ("previous_token", "induction")]
            spread = " ".join(f"{v:.1f}" for v in layer["logit_std"])
            print(
                f"  layer {index}: previous-token {row[0]} | induction {row[1]} | logit std "
                f"{spread}"
            )
    if args.output:
        from megadyt.atomic import atomic_write_text

        atomic_write_text(args.output, json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
