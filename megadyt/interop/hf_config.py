"""transformers' config for a megadyt model: LlamaConfig, plus the megadyt keys where needed.

An RMSNorm model without the embedding scalar is exactly transformers' LLaMA, so its config is
a plain `LlamaConfig` (no custom code to trust). Anything else (DyT, Derf, or RMSNorm with the
scalar) names `modeling_megadyt.py` through `auto_map` and records the norm's function (a torch
function name), whether it has a shift and a bias, and the scalar. The serialisation is
transformers' own (`to_dict`), so the keys match its version.
"""

from __future__ import annotations

from megadyt.config.schema import ModelConfig
from megadyt.norms.registry import LLAMA_NORM, has_embedding_scale, norm_entry

MODELING_MODULE = "modeling_megadyt"
MODEL_TYPE = "megadyt_llama"  # config.json's model_type for anything but a plain LLaMA
CUSTOM_CLASSES = {
    "AutoConfig": f"{MODELING_MODULE}.MegadytLlamaConfig",
    "AutoModelForCausalLM": f"{MODELING_MODULE}.MegadytLlamaForCausalLM",
}


def llama_config(m: ModelConfig, **overrides):
    """transformers' LlamaConfig with megadyt's shape: untied, no biases, same eps and RoPE base."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=m.vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.ffn_hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.kv_heads,
        max_position_embeddings=m.seq_length,
        rms_norm_eps=m.norm_eps,
        rope_theta=float(m.rotary_base),  # transformers 5 folds it into rope_parameters
        initializer_range=m.resolved_init_std,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
    )
    return LlamaConfig(**{**settings, **overrides})


def is_plain_llama(m: ModelConfig) -> bool:
    """True when transformers' own LlamaForCausalLM is this model (no custom code needed)."""
    return m.norm == LLAMA_NORM and not has_embedding_scale(m)


def hf_config_dict(m: ModelConfig, dtype: str, bos_id: int | None, eos_id: int | None) -> dict:
    """config.json's content for model `m` stored in `dtype` ("float32", "bfloat16")."""
    config = llama_config(m, bos_token_id=bos_id, eos_token_id=eos_id).to_dict()
    config["dtype"] = dtype
    if is_plain_llama(m):
        config["architectures"] = ["LlamaForCausalLM"]
        return config
    entry = norm_entry(m.norm)
    config.update(
        architectures=["MegadytLlamaForCausalLM"],
        model_type=MODEL_TYPE,
        auto_map=dict(CUSTOM_CLASSES),
        megadyt_norm=m.norm,  # the name, for import-hf and for people reading config.json
        # what modeling_megadyt computes: weight * torch.<function>(alpha * x (+ shift)) (+ bias)
        megadyt_function=entry.function.name if entry.function else None,
        megadyt_norm_shift=entry.has_shift,
        megadyt_norm_bias=bool(m.norm_bias) and entry.squashing,
        megadyt_embedding_scale=has_embedding_scale(m),
    )
    return config
