"""Exact parameter counts from the config alone, so `megadyt info` never allocates weights.

The formula mirrors what `build_model` creates (tests check it against real builds); for the
RMSNorm presets it reproduces the published LLaMA counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from megadyt.config.schema import ModelConfig


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
    d = model.hidden_size
    if model.norm == "rmsnorm":
        return d  # γ
    count = d + 1  # γ, α
    if model.norm == "derf":
        count += 1  # s
    if model.norm_bias:
        count += d  # β
    return count


def count_parameters(model: ModelConfig) -> ParameterCounts:
    d, L, V = model.hidden_size, model.num_layers, model.vocab_size
    head_dim = d // model.num_attention_heads
    q_width = model.num_attention_heads * head_dim
    kv_width = model.kv_heads * head_dim
    attention = L * (d * (q_width + 2 * kv_width) + q_width * d)
    mlp = L * (d * 2 * model.ffn_hidden_size + model.ffn_hidden_size * d)
    norm = (2 * L + 1) * params_per_norm(model) + (1 if model.has_embedding_scale else 0)
    embedding = output = V * d
    total = embedding + output + attention + mlp + norm
    return ParameterCounts(total, embedding, output, attention, mlp, norm)
