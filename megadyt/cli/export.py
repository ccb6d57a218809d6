"""`megadyt export`: one TP=1 weights file from any checkpoint (any TP size, any ZeRO stage)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import yaml

HELP = "merge a checkpoint's TP shards into one TP=1 weights file (+ its config YAML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run dir, its checkpoints/ dir, or a checkpoints/step_NNNNNNN dir",
    )
    parser.add_argument("--output", required=True, help="output .pt file (config goes to .yaml)")


def run(args: argparse.Namespace) -> int:
    from megadyt.training.export import load_tp1_weights, resolve_tag_dir

    cfg, state = load_tp1_weights(args.checkpoint)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out)
    out.with_suffix(".yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    total = sum(t.numel() for t in state.values())
    print(f"exported {resolve_tag_dir(args.checkpoint)} -> {out} ({total:,} parameters, TP=1)")
    return 0
