"""`megadyt import-hf`: a Hugging Face LLaMA directory as a new run's step-0 checkpoint.

`megadyt train` with the same config then continues from it (continued pretraining). With
`--norm dyt|derf` an RMSNorm model is converted first (`training.norm_conversion`): γ kept, α
calibrated on the config's training data, and the validation loss of the original and of the
converted model reported before any training.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from megadyt.cli.main import add_config_arguments
from megadyt.config import load_config
from megadyt.config.schema import NormName
from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable

HELP = "start a run from a Hugging Face LLaMA directory (optionally converting RMSNorm to DyT/Derf)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="a transformers LLaMA directory")
    parser.add_argument("--output", required=True, help="the new run directory (run.dir)")
    parser.add_argument(
        "--norm",
        choices=typing.get_args(NormName),
        help="convert an RMSNorm model to this squashing norm (sets model.norm; α calibrated "
        "on data)",
    )


def _single_process(cfg):
    """The config as the import runs it: one process, TP=1, no ZeRO."""
    parallel = dataclasses.replace(cfg.parallel, tp=1, sp=False, zero_stage=0)
    return dataclasses.replace(cfg, parallel=parallel)


def _check_norms(source: str, target: str, requested: str | None) -> bool:
    """Whether the import converts norms; refuses pairs it cannot map."""
    from megadyt.norms.registry import LLAMA_NORM, squashing_norms

    if source == target:
        return False
    if source == LLAMA_NORM and requested == target and target in squashing_norms():
        return True
    if requested is not None and requested not in squashing_norms():
        raise MegadytError(
            f"--norm {requested}: conversion goes from {LLAMA_NORM} to a squashing norm "
            f"({', '.join(squashing_norms())})"
        )
    how = f"--norm {target}" if source == LLAMA_NORM else f"--set model.norm={source}"
    raise MegadytError(
        f"the Hugging Face model has {source} norms and the config model.norm={target}; use {how}"
    )


def run(args: argparse.Namespace) -> int:
    overrides = [*args.overrides, f"run.dir={args.output}"]
    cfg = load_config(args.config, overrides + ([f"model.norm={args.norm}"] if args.norm else []))
    if Path(args.output).exists():
        raise MegadytError(f"{args.output} exists; import into a new run directory")
    check_writable(args.output, "--output", directory=True)

    from megadyt.interop.hf_import import HFCheckpoint, check_config

    hf = HFCheckpoint(args.model)
    check_config(hf, cfg.model)
    converting = _check_norms(hf.norm, cfg.model.norm, args.norm)

    from megadyt.parallel.distributed import destroy_distributed, init_distributed

    init_distributed(tp=1)
    try:
        return _import(cfg, hf, converting)
    finally:
        destroy_distributed()


def _import(cfg, hf, converting: bool) -> int:
    from megadyt.model import build_model
    from megadyt.parallel.distributed import seed_everything
    from megadyt.parallel.tp_shards import tp_layout
    from megadyt.training.checkpoint.initial import write_initial_run

    single = _single_process(cfg)
    seed_everything(cfg.train.seed)
    # initialised although every value is replaced: megatron-core tags the TP-split
    # parameters (tp_layout, which splits the weights for the config's TP) only when it does
    model = build_model(single)
    weights = {n: p.detach() for n, p in model.named_parameters()}
    imported = _read_into(hf, single.model, weights, converting)
    record = {"source": str(hf.folder.resolve()), "from_norm": hf.norm, "norm": cfg.model.norm}
    if converting:
        original = {n: t for n, t in weights.items() if n in imported}
        record["conversion"] = _convert(single, model, original)
    tag_dir = write_initial_run(cfg.run.dir, cfg, weights, tp_layout(model), record)
    total = sum(t.numel() for t in weights.values())
    print(
        f"imported {hf.folder} -> {tag_dir} ({total:,} parameters, TP={cfg.parallel.tp}, "
        f"model.norm={cfg.model.norm}); continue with: megadyt train --config ... "
        f"--set run.dir={cfg.run.dir}"
    )
    return 0


def _read_into(hf, model_cfg, weights: dict, converting: bool) -> set[str]:
    """Copy the directory's tensors into the model's parameters one at a time (the model plus
    one tensor in memory); a conversion sets the parameters RMSNorm lacks to their neutral
    values. Returns the names read from the directory."""
    from megadyt.interop.hf_import import read_megadyt_tensors
    from megadyt.training.norm_conversion import neutral_value

    expected = {n: t.shape for n, t in weights.items()}
    imported = set()
    for name, tensor in read_megadyt_tensors(hf, model_cfg, expected):
        weights[name].copy_(tensor)
        imported.add(name)
    for name in sorted(set(weights) - imported):
        value = neutral_value(name) if converting else None
        if value is None:
            raise MegadytError(
                f"{hf.folder} has no tensor for {name} of a model.norm={model_cfg.norm} model: "
                "is the config's norm the model's?"
            )
        weights[name].fill_(value)
    return imported


def _convert(single, model, original_state: dict) -> dict:
    """Calibrate the converted model's α and compare its validation loss with the original's."""
    from megadyt.model import build_model
    from megadyt.training.calibrate import calibrate_model, describe
    from megadyt.training.checkpoint.weights import load_into
    from megadyt.training.data import build_train_valid
    from megadyt.training.evaluator import Evaluator

    train_data, valid_data = build_train_valid(single)
    records = calibrate_model(single, model, train_data, match_rmsnorm=True)
    from megadyt.norms.registry import LLAMA_NORM

    plain = dataclasses.replace(single.model, norm=LLAMA_NORM, embedding_scale="off")
    reference = build_model(dataclasses.replace(single, model=plain), perform_initialization=False)
    load_into(reference, original_state, f"the RMSNorm original of {single.run.dir}")
    evaluator = Evaluator(single, valid_data)  # the samples training's validation loss reads
    samples = single.train.eval_iters * single.train.global_batch_size
    before, after = evaluator.validation_loss(reference), evaluator.validation_loss(model)
    print(f"calibrated α: {describe(records)}")
    print(
        f"validation loss before training ({samples} samples): rmsnorm original {before:.4f}, "
        f"converted {single.model.norm} {after:.4f} ({after - before:+.4f})"
    )
    return {
        "validation_samples": samples,
        "validation_loss_original": before,
        "validation_loss_converted": after,
        "calibration": [r.to_dict() for r in records],
    }
