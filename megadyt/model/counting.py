"""Exact parameter counts from the config alone, so `megadyt info` never allocates weights.

The formula mirrors what `build_model` creates (tests check it against real builds); for the
RMSNorm presets it reproduces the published LLaMA counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from megadyt.config.schema import ModelConfig
from megadyt.norms.registry import has_embedding_scale, norm_entry


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    embedding: int  # input embedding table
    output: int  # untied output projection
    attention: int  # all layers
    mlp: int  # all layers
    norm: int  # all norm parameters (γ, β, α, s) plus the embedding scalar

    def as_dict(self) -> dict[str, int]:
        return {f"params_{k}": v for k, v in self.__dict__.items()}


def params_per_norm(model: ModelConfig) -> int:
    """Parameters of one norm module (γ, and β/α/s where the norm has them), from its registry
    entry; MegadytError for an unknown norm."""
    return norm_entry(model.norm).params_per_norm(model)


def count_parameters(model: ModelConfig) -> ParameterCounts:
    """Every parameter of `build_model` for this config, by group."""
    d, L, V = model.hidden_size, model.num_layers, model.vocab_size
    head_dim = d // model.num_attention_heads
    q_width = model.num_attention_heads * head_dim
    kv_width = model.kv_heads * head_dim
    attention = L * (d * (q_width + 2 * kv_width) + q_width * d)
    mlp = L * (d * 2 * model.ffn_hidden_size + model.ffn_hidden_size * d)
    norm = (2 * L + 1) * params_per_norm(model) + (1 if has_embedding_scale(model) else 0)
    embedding = output = V * d
    total = embedding + output + attention + mlp + norm
    return ParameterCounts(total, embedding, output, attention, mlp, norm)
