"""`megadyt export`: one TP=1 weights file from any checkpoint (any TP size, any ZeRO stage)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from megadyt.atomic import atomic_output, atomic_write_text

HELP = "merge a checkpoint's TP shards into one TP=1 weights file (+ its config YAML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run dir, its checkpoints/ dir, or a checkpoints/step_NNNNNNN dir",
    )
    parser.add_argument("--output", required=True, help="output .pt file (config goes to .yaml)")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="read the weights without checking them against the checkpoint's manifest",
    )


def run(args: argparse.Namespace) -> int:
    from megadyt.training.rundir import checkpoint_step, resolve_checkpoint
    from megadyt.training.weights import load_tp1_weights

    tag_dir = resolve_checkpoint(args.checkpoint)
    cfg, state = load_tp1_weights(tag_dir, verify=not args.no_verify)
    out = Path(args.output)
    with atomic_output(out) as tmp:
        torch.save(state, tmp)
    atomic_write_text(out.with_suffix(".yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    total = sum(t.numel() for t in state.values())
    checked = "unverified" if args.no_verify else "verified"
    print(
        f"exported step {checkpoint_step(tag_dir)} ({tag_dir}, {checked}) -> {out} "
        f"({total:,} parameters, TP=1)"
    )
    return 0
