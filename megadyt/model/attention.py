"""Core attention through torch's `scaled_dot_product_attention`.

megatron-core's local `DotProductAttention` materialises the [b, heads, s, s] scores, applies
an explicit mask and keeps the probabilities for backward; with Transformer Engine absent (the
local spec) that is the only choice it offers. `F.scaled_dot_product_attention` with
`is_causal=True` needs no mask and dispatches to FlashAttention or memory-efficient kernels on
CUDA and a fused kernel on CPU. It has no parameters, so checkpoints are the same either way.
Cases it does not cover (inference with a KV cache, dropout under megatron's RNG tracker,
query-key layer scaling, windows, softmax offsets, packed sequences) go to megatron's class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType


class SdpaDotProductAttention(DotProductAttention):
    """megatron's core attention with its causal self-attention case on SDPA kernels."""

    def _sdpa_applies(self, query, key, attn_mask_type, attention_bias, packed_seq_params) -> bool:
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        return (
            mask_type == AttnMaskType.causal
            and query.size(0) == key.size(0)  # is_causal aligns top-left: no KV-cache decoding
            and attention_bias is None
            and packed_seq_params is None
            and self.softmax_offset is None
            and self.scale_mask_softmax.window_size is None
            and not self.config.apply_query_key_layer_scaling
            and (self.attention_dropout.p == 0.0 or not self.training)
        )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        """[s, b, heads, d] query and [s, b, groups, d] key/value -> context [s, b, heads·d]."""
        if not self._sdpa_applies(query, key, attn_mask_type, attention_bias, packed_seq_params):
            return super().forward(
                query, key, value, attention_mask, attn_mask_type, attention_bias, packed_seq_params
            )
        seq, batch = query.shape[:2]
        # [s, b, n, d] -> [b, n, s, d]; SDPA takes strided inputs
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            scale=self.softmax_scale,
            enable_gqa=self.num_attention_heads_per_partition
            != self.num_query_groups_per_partition,
        )
        # [b, n, s, d] -> [s, b, n·d]
        return context.permute(2, 0, 1, 3).reshape(seq, batch, self.hidden_size_per_partition)


class CheckpointedSelfAttention(SelfAttention):
    """megatron's self-attention; its selective recompute traceable by torch.compile."""

    def _checkpointed_attention_forward(
        self,
        query,
        key,
        value,
        attention_mask,
        rotary_pos_emb=None,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ):
        if not torch.compiler.is_compiling():
            return super()._checkpointed_attention_forward(
                query, key, value, attention_mask, rotary_pos_emb, attn_mask_type,
                attention_bias, packed_seq_params,
            )  # fmt: skip
        return torch.utils.checkpoint.checkpoint(
            self.core_attention,
            query,
            key,
            value,
            attention_mask,
            attn_mask_type=attn_mask_type if attn_mask_type is not None else self.attn_mask_type,
            attention_bias=attention_bias,
            packed_seq_params=packed_seq_params,
            use_reentrant=False,
        )
