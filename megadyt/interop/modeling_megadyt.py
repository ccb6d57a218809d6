"""megadyt's normalization-free LLaMA for Hugging Face transformers.

`megadyt export --format hf` copies this file next to the weights of a DyT or Derf model (or of
an RMSNorm model with the embedding scalar); load it with
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`. It is transformers'
LlamaForCausalLM with two changes, as trained by megadyt:
- every norm slot (before attention, before the MLP, the final one) holds
  y = weight * f(alpha * x + shift) + bias, with f the torch function `megadyt_function` names
  (tanh for DyT, erf for Derf), a shift only where `megadyt_norm_shift` says so (Derf) and no
  bias unless the model was trained with one; computed in float32 for bf16/fp16 inputs;
- the token embedding is multiplied by a learned scalar (`model.embed_tokens.scale`).
This file imports only torch and transformers (>= MIN_TRANSFORMERS), never megadyt.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

MIN_TRANSFORMERS = "5.0"


class MegadytLlamaConfig(LlamaConfig):
    model_type = "megadyt_llama"

    def __init__(
        self,
        megadyt_norm: str = "dyt",
        megadyt_function: str | None = "tanh",
        megadyt_norm_shift: bool = False,
        megadyt_norm_bias: bool = False,
        megadyt_embedding_scale: bool = True,
        **kwargs,
    ) -> None:
        self.megadyt_norm = megadyt_norm  # the megadyt norm's name (a label only)
        self.megadyt_function = megadyt_function  # None: LLaMA's own RMSNorm in every slot
        self.megadyt_norm_shift = megadyt_norm_shift
        self.megadyt_norm_bias = megadyt_norm_bias
        self.megadyt_embedding_scale = megadyt_embedding_scale
        super().__init__(**kwargs)


class ElementwiseNorm(nn.Module):
    """A squashing norm in a norm slot: weight * f(alpha * x + shift) + bias, f = torch.<name>."""

    def __init__(self, hidden_size: int, function: str, shift: bool, bias: bool) -> None:
        super().__init__()
        self.f = getattr(torch, function, None)
        if not callable(self.f):
            raise ValueError(f"megadyt_function {function!r} is not a torch function")
        self.function = function
        self.alpha = nn.Parameter(torch.ones(1))
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.shift = nn.Parameter(torch.zeros(1)) if shift else None
        self.bias = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        z = self.alpha.to(dtype) * x.to(dtype)
        if self.shift is not None:
            z = z + self.shift.to(dtype)
        y = self.weight.to(dtype) * self.f(z)
        if self.bias is not None:
            y = y + self.bias.to(dtype)
        return y.to(x.dtype)


class ScaledEmbedding(nn.Embedding):
    """The token embedding times a learned scalar (`scale`, trained from sqrt(hidden_size))."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx=None) -> None:
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(input_ids)
        return out * self.scale.to(out.dtype)


class MegadytLlamaForCausalLM(LlamaForCausalLM):
    config_class = MegadytLlamaConfig

    def __init__(self, config: MegadytLlamaConfig) -> None:
        super().__init__(config)
        inner = self.model
        if config.megadyt_function is not None:

            def norm() -> ElementwiseNorm:
                return ElementwiseNorm(
                    config.hidden_size,
                    config.megadyt_function,
                    config.megadyt_norm_shift,
                    config.megadyt_norm_bias,
                )

            for layer in inner.layers:
                layer.input_layernorm = norm()
                layer.post_attention_layernorm = norm()
            inner.norm = norm()
        if config.megadyt_embedding_scale:
            inner.embed_tokens = ScaledEmbedding(
                config.vocab_size, config.hidden_size, config.pad_token_id
            )
        self.post_init()
