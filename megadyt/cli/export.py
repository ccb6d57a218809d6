"""`megadyt export`: a checkpoint (any TP size, any ZeRO stage) as one TP=1 weights file
(`--format megadyt`) or as a Hugging Face transformers directory (`--format hf`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable

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
        "--max-shard-size",
        type=float,
        default=5.0,
        metavar="GB",
        help="hf: the largest safetensors shard in GB (default 5, transformers' own); the "
        "export holds about one shard in memory",
    )
    parser.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="hf: write no tokenizer.json (by default one is written, after checking that it "
        "gives SentencePiece's ids on the built-in held-out corpus)",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="read the weights without checking them against the checkpoint's manifest",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="megadyt: replace an existing --output .pt and the .yaml beside it",
    )


def _check_outputs(args: argparse.Namespace) -> Path:
    """Before anything is loaded: the output can be written, and overwrites nothing unasked
    (the .yaml beside the weights may be the user's own config)."""
    out = Path(args.output)
    if args.format == "hf":
        if out.exists():
            raise MegadytError(f"{out} exists; export into a new directory (or delete it first)")
        return check_writable(out, "--output", directory=True)
    config = out.with_suffix(".yaml")
    if config == out:
        raise MegadytError(
            f"--output {out} would hold both the weights and their config ({config.name}); "
            f"name the weights file, e.g. --output {out.with_suffix('.pt')}"
        )
    for path in (out, config):
        if path.exists() and not args.force:
            beside = "" if path == out else " (the config written beside the weights)"
            raise MegadytError(
                f"{path} exists{beside}; choose another --output, or pass --force to replace it"
            )
    return check_writable(out, "--output")


def run(args: argparse.Namespace) -> int:
    out = _check_outputs(args)
    import torch
    import yaml

    from megadyt.atomic import atomic_output, atomic_write_text
    from megadyt.training.checkpoint.weights import load_tp1_weights
    from megadyt.training.run.layout import checkpoint_step, resolve_checkpoint

    tag_dir = resolve_checkpoint(args.checkpoint)
    cfg, state = load_tp1_weights(tag_dir, verify=not args.no_verify)
    checked = "unverified" if args.no_verify else "verified"
    source = f"step {checkpoint_step(tag_dir)} ({tag_dir}, {checked})"
    if args.format == "hf":
        return _export_hf(cfg, state, out, args, source)
    merged = dict(state)  # the .pt holds the whole merged state
    with atomic_output(out) as tmp:
        torch.save(merged, tmp)
    atomic_write_text(out.with_suffix(".yaml"), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    total = sum(t.numel() for t in merged.values())
    print(f"exported {source} -> {out} ({total:,} parameters, TP=1)")
    return 0


def _export_hf(cfg, state: dict, out: Path, args: argparse.Namespace, source: str) -> int:
    from megadyt.data.builtin import heldout_texts
    from megadyt.data.tokenizer import load_tokenizer
    from megadyt.interop.hf_export import TokenizerSource, write_hf_export

    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)
    texts = [] if args.no_tokenizer else heldout_texts(cfg.data.cache_dir)
    ids = [i if i >= 0 else None for i in (tokenizer.bos_id, tokenizer.eos_id)]
    model_path = None if args.no_tokenizer else tokenizer.model_path
    spec = TokenizerSource(model_path, *ids, texts)
    if args.max_shard_size <= 0:
        raise MegadytError(f"--max-shard-size {args.max_shard_size} must be positive")
    shard_bytes = int(args.max_shard_size * 10**9)
    summary = write_hf_export(cfg, state, out, args.dtype, spec, shard_bytes)
    how = (
        "transformers' LlamaForCausalLM"
        if summary.plain_llama
        else "modeling_megadyt.py: load with trust_remote_code=True"
    )
    tokens = (
        f"tokenizer.json checked on {summary.tokenizer_texts:,} texts"
        if summary.tokenizer_texts
        else "no tokenizer"
    )
    print(
        f"exported {source} -> {out} ({summary.parameters:,} parameters, {args.dtype}, "
        f"{summary.shards} shard(s); {how}; {tokens}; score with EOS (id {ids[1]}) as the "
        "prefix token)"
    )
    return 0
