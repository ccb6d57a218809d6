"""`megadyt export`: a checkpoint (any TP size, any ZeRO stage) as one TP=1 weights file
(`--format megadyt`) or as a Hugging Face transformers directory (`--format hf`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from megadyt.atomic import atomic_output, atomic_write_text

HELP = "a checkpoint as one TP=1 weights file (+ config YAML), or as a transformers directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run dir, its checkpoints/ dir, or a checkpoints/step_NNNNNNN dir",
    )
    parser.add_argument(
        "--format",
        choices=["megadyt", "hf"],
        default="megadyt",
        help="megadyt: one .pt file of megatron-named tensors (+ .yaml); hf: a transformers "
        "directory (safetensors shards, config.json, modeling file for DyT/Derf)",
    )
    parser.add_argument(
        "--output", required=True, help="megadyt: output .pt file (config goes to .yaml); hf: a "
        "new directory",
    )  # fmt: skip
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="hf: the dtype of the exported weights (default float32)",
    )
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
    checked = "unverified" if args.no_verify else "verified"
    source = f"step {checkpoint_step(tag_dir)} ({tag_dir}, {checked})"
    if args.format == "hf":
        return _export_hf(cfg, state, out, args.dtype, source)
    with atomic_output(out) as tmp:
        torch.save(state, tmp)
    atomic_write_text(out.with_suffix(".yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    total = sum(t.numel() for t in state.values())
    print(f"exported {source} -> {out} ({total:,} parameters, TP=1)")
    return 0


def _export_hf(cfg, state: dict, out: Path, dtype: str, source: str) -> int:
    from megadyt.data.tokenizer import load_tokenizer
    from megadyt.interop.hf_export import write_hf_export

    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
    ids = (tokenizer.bos_id, tokenizer.eos_id)
    summary = write_hf_export(cfg, state, out, dtype, tuple(i if i >= 0 else None for i in ids))
    how = (
        "transformers' LlamaForCausalLM"
        if summary.plain_llama
        else "modeling_megadyt.py: load with trust_remote_code=True"
    )
    print(
        f"exported {source} -> {out} ({summary.parameters:,} parameters, {dtype}, "
        f"{summary.shards} shard(s); {how})"
    )
    return 0
