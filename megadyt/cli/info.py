"""`megadyt info`: the model's shape, α₀ choices and exact parameter counts, without weights."""

from __future__ import annotations

import argparse
import json

from megadyt.cli.main import add_config_arguments
from megadyt.config import Config, load_config
from megadyt.model.counting import count_parameters
from megadyt.norms import resolve_alpha0
from megadyt.norms.registry import has_embedding_scale, norm_entry
from megadyt.training.calibrate import calibration_constants

HELP = "print model shape and exact parameter counts (no weights are allocated)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def model_info(cfg: Config) -> dict:
    m = cfg.model
    counts = count_parameters(m)
    info = {
        "name": m.name,
        "norm": m.norm,
        "params_total": counts.total,
        "params_norm": counts.norm,
        "params_embedding": counts.embedding,
        "params_output": counts.output,
        "params_attention": counts.attention,
        "params_mlp": counts.mlp,
        "num_layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "ffn_hidden_size": m.ffn_hidden_size,
        "num_attention_heads": m.num_attention_heads,
        "num_query_groups": m.kv_heads,
        "vocab_size": m.vocab_size,
        "seq_length": m.seq_length,
        "micro_batch_size": cfg.train.micro_batch_size,
        "global_batch_size": cfg.train.global_batch_size,
        "tokens_per_step": cfg.tokens_per_step,
        "embedding_scale": has_embedding_scale(m),
        "init_std": {
            "value": m.resolved_init_std,
            "source": "auto: 1/sqrt(hidden_size)" if m.init_std == "auto" else "config",
        },
        "tp": cfg.parallel.tp,
        "sp": cfg.parallel.sp,
        "zero_stage": cfg.parallel.zero_stage,
        "weight_decay": {
            "value": cfg.train.weight_decay,
            "norm_params": cfg.train.decay_norm_params,
            "norm_scalars": cfg.train.decay_norm_params and cfg.train.decay_norm_scalars,
        },
    }
    if norm_entry(m.norm).squashing:  # α₀ and its initialisation exist only for these
        alpha = resolve_alpha0(m.hidden_size, m.alpha0_attention, m.alpha0_ffn, m.alpha0_final)
        info["alpha0"] = {
            role: {"value": getattr(alpha, role), "source": alpha.sources[role]}
            for role in ("attention", "ffn", "final")
        }
        info["alpha_init"] = {"mode": m.alpha_init}
        if m.alpha_init == "calibrate":
            constants = calibration_constants(cfg)
            info["alpha_init"].update(
                attention=constants.attention,
                other=constants.other,
                final=constants.final,
                source=constants.source,
            )
    return info


def _describe(key: str, value) -> str:
    if key == "alpha0":
        return ", ".join(f"{r} {v['value']:.4g} ({v['source']})" for r, v in value.items())
    if key == "init_std":
        return f"{value['value']:.4g} ({value['source']})"
    if key == "alpha_init" and value["mode"] == "calibrate":
        return (
            f"calibrate: at the start of a fresh run α = {value['attention']:g}/std(input) for "
            f"attention norms, {value['other']:g}/std(input) for FFN norms and "
            f"{value['final']:g}/std(input) for the final norm ({value['source']}; α₀ above is "
            "only the value before calibration)"
        )
    if key == "alpha_init":
        return "rule: α starts at α₀ above"
    if key == "weight_decay":
        return f"{value['value']:g} on the weight matrices; " + _decayed_norm_params(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def _decayed_norm_params(value: dict) -> str:
    if not value["norm_params"]:
        return "the norms' parameters and any embedding scalar spared (train.decay_norm_params)"
    if not value["norm_scalars"]:
        return "γ, β and any embedding scalar too; α and s spared (train.decay_norm_scalars)"
    return "the norms' parameters and any embedding scalar too (train.decay_norm_params)"


def run(args: argparse.Namespace) -> int:
    info = model_info(load_config(args.config, args.overrides))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        print(f"{key:<{width}}  {_describe(key, value)}")
    return 0
