"""A normalization-free LLaMA, built from megatron-core's GPTModel and local layer spec.

LLaMA = RoPE, SwiGLU, no biases, untied embeddings, GQA where the preset has it. The norm is a
spec choice: every norm slot (pre-attention, pre-FFN, final) gets DyT, Derf or RMSNorm from
`megadyt.norms`, with α₀ per role from the width rule. For DyT/Derf a learnable scalar (init √d)
multiplies the token embedding, as in the paper's LLM recipe. This module knows nothing of
DeepSpeed, SLURM or launchers; parallel_state must be initialised before `build_model`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from megadyt.config.schema import Config, ModelConfig
from megadyt.model import rope
from megadyt.model.attention import CheckpointedSelfAttention, SdpaDotProductAttention
from megadyt.model.linear import CompilableColumnParallelLinear, CompilableRowParallelLinear
from megadyt.model.loss import LossOutputLayer, fused_loss_applies
from megadyt.norms import tp_summed
from megadyt.norms.registry import entry_of, has_embedding_scale, norm_classes, norm_entry


def transformer_config(cfg: Config, perform_initialization: bool = True) -> TransformerConfig:
    """megatron-core's TransformerConfig for this model and parallel layout."""
    m, p = cfg.model, cfg.parallel
    on_cuda = torch.cuda.is_available()
    recompute = {
        "none": {},
        "selective": {"recompute_granularity": "selective"},
        "full": {
            "recompute_granularity": "full",
            "recompute_method": "uniform",
            "recompute_num_layers": 1,
        },
    }[p.recompute]
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.kv_heads,
        normalization="RMSNorm",  # megatron-core's own bookkeeping; our spec fills the slots
        layernorm_epsilon=m.norm_eps,
        add_bias_linear=False,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=m.resolved_init_std,
        tensor_model_parallel_size=p.tp,
        sequence_parallel=p.sp,
        params_dtype=torch.float32,  # DeepSpeed casts to bf16 where training in bf16
        perform_initialization=perform_initialization,
        # CPU init draws each full weight from the default generator and then slices it, so a
        # TP=2 model starts from exactly the TP=1 weights; on CUDA megatron's fast path is kept.
        use_cpu_initialization=not on_cuda,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        # megatron-core's fused-rotary slot: Transformer Engine's kernel where installed, else
        # megadyt.model.rope (cos/sin once per table, no concatenations; bitwise the same)
        apply_rope_fusion=rope.install(),
        masked_softmax_fusion=on_cuda,
        persist_layer_norm=False,
        **recompute,
    )


def norm_spec(model: ModelConfig, role: str) -> ModuleSpec:
    """The ModuleSpec that fills one norm slot; `role` is attention, ffn or final."""
    entry = norm_entry(model.norm)  # MegadytError for an unknown norm
    return ModuleSpec(module=entry.cls, params=entry.spec_params(model, role))


def block_spec(model: ModelConfig) -> TransformerBlockSubmodules:
    """megatron-core's local GPT layer spec with our norm in every slot, final norm included,
    and the core attention `model.attention_impl` names. The self-attention and row-parallel
    linear classes are megatron-core's with the changes a compiled layer needs
    (megadyt.model.attention, megadyt.model.linear); eager, they compute the same."""
    layer = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    layer.submodules.input_layernorm = norm_spec(model, "attention")
    layer.submodules.pre_mlp_layernorm = norm_spec(model, "ffn")
    if model.attention_impl == "sdpa":
        layer.submodules.self_attention.submodules.core_attention = SdpaDotProductAttention
    layer.submodules.self_attention.module = CheckpointedSelfAttention
    attention, mlp = layer.submodules.self_attention.submodules, layer.submodules.mlp.submodules
    attention.linear_qkv = mlp.linear_fc1 = CompilableColumnParallelLinear
    attention.linear_proj = mlp.linear_fc2 = CompilableRowParallelLinear
    return TransformerBlockSubmodules(
        layer_specs=[layer] * model.num_layers, layer_norm=norm_spec(model, "final")
    )


def _scale_embedding_output(module: torch.nn.Module, inputs, output: torch.Tensor):
    scale = tp_summed(module.embedding_scale, module.config.sequence_parallel)
    return output * scale.to(output.dtype)


class LlamaModel(GPTModel):
    """GPTModel plus the learnable embedding scalar, and a forward taking tokens (and labels)."""

    def __init__(self, cfg: Config, perform_initialization: bool = True) -> None:
        m = cfg.model
        super().__init__(
            config=transformer_config(cfg, perform_initialization),
            transformer_layer_spec=block_spec(m),
            vocab_size=m.vocab_size,
            max_sequence_length=m.seq_length,
            share_embeddings_and_output_weights=False,
            position_embedding_type="rope",
            rotary_base=m.rotary_base,
        )
        if has_embedding_scale(m):
            # h0 = embed(tokens) * s, s initialised to sqrt(d); under SP each rank holds a slice
            # of the sequence, so s's gradient is summed over TP like the norm parameters'.
            scale = torch.nn.Parameter(torch.full((1,), math.sqrt(m.hidden_size)))
            scale.sequence_parallel = cfg.parallel.sp
            self.embedding.embedding_scale = scale
            self.embedding.register_forward_hook(_scale_embedding_output)
        self._causal_masks: dict[tuple[int, torch.device], torch.Tensor] = {}
        # GPTModel builds its output layer itself (no spec slot): re-class it to add the chunked
        # loss path. Weights, state-dict keys and the logits path stay megatron-core's.
        self.output_layer.__class__ = LossOutputLayer
        self.fused_loss = m.fused_loss

    def causal_mask(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """[1, 1, s, s] boolean mask, True above the diagonal (masked), built on `device`."""
        key = (seq_len, device)
        if key not in self._causal_masks:
            ones = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device)
            self._causal_masks[key] = torch.triu(ones, diagonal=1)[None, None]
        return self._causal_masks[key]

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        """tokens [b, s] -> per-token loss [b, s] if labels are given, else logits [b, s, V/tp]."""
        if "position_ids" in kwargs:  # megatron-style call, e.g. from its inference code
            return super().forward(tokens, labels=labels, **kwargs)
        b, s = tokens.shape
        position_ids = torch.arange(s, device=tokens.device).unsqueeze(0).expand(b, s)
        return super().forward(
            input_ids=tokens,
            position_ids=position_ids,
            attention_mask=self.causal_mask(s, tokens.device),
            labels=labels,
        )

    def _postprocess(self, hidden_states, labels=None, **kwargs):
        """GPTModel's logits-and-loss step; a loss under `model.fused_loss` comes from the
        output layer's chunked path (megadyt.model.loss) instead of the whole logits."""
        if labels is not None and kwargs.get("inference_context") is None:
            layer = self.output_layer
            if fused_loss_applies(
                self.fused_loss, labels.numel(), layer.input_size, layer.output_size_per_partition
            ):
                loss, _ = layer(hidden_states, labels=labels.transpose(0, 1))
                return loss.transpose(0, 1).contiguous()
        return super()._postprocess(hidden_states=hidden_states, labels=labels, **kwargs)


def build_model(cfg: Config, perform_initialization: bool = True) -> LlamaModel:
    """Build the model for this rank's TP shard. Seed the generators first for reproducibility."""
    return LlamaModel(cfg, perform_initialization)


def norm_display_name(module_name: str) -> str:
    """'decoder.layers.3.pre_mlp_layernorm' -> 'layer3.ffn'; the final norm -> 'final'. The
    one naming of norms in logs, metrics and calibration records."""
    name = module_name.removeprefix("module.")
    name = name.replace("decoder.layers.", "layer").replace("decoder.", "")
    for megatron, ours in (
        ("input_layernorm", "attention"),
        ("pre_mlp_layernorm", "ffn"),
        ("final_layernorm", "final"),
    ):
        name = name.replace(megatron, ours)
    return name


def norm_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(display name, module) of every norm, in forward order."""
    norm_types = norm_classes()
    return [
        (norm_display_name(name), module)
        for name, module in model.named_modules()
        if isinstance(module, norm_types)
    ]


def norm_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of all norm parameters (γ, β, α, s) and the embedding scalar."""
    names = []
    norm_types = norm_classes()
    for module_name, module in model.named_modules():
        if isinstance(module, norm_types):
            names += [f"{module_name}.{n}" for n, _ in module.named_parameters(recurse=False)]
    names += [n for n, _ in model.named_parameters() if n.endswith("embedding_scale")]
    return names


def norm_scalar_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the norms' scalar parameters (α, s: each registry entry's `scalars`)."""
    norm_types = norm_classes()
    return [
        f"{name}.{scalar}"
        for name, module in model.named_modules()
        if isinstance(module, norm_types)
        for scalar in entry_of(module).scalars
    ]


def _scalar(param: torch.Tensor) -> float:
    return float(param.detach().float().reshape(-1)[0])


def norm_scalars(model: torch.nn.Module) -> dict[str, float]:
    """{"norm/<scalar>/<norm>": value} for each norm's logged scalars (α, s: its registry
    entry's `scalars`) and "model/embedding_scale" when the model has one -- what training logs
    (ZeRO-3 keeps such small parameters whole on every rank)."""
    out = {}
    for name, module in norm_modules(model):
        for scalar in entry_of(module).scalars:
            out[f"norm/{scalar}/{name}"] = _scalar(getattr(module, scalar))
    for name, param in model.named_parameters():
        if name.endswith("embedding_scale"):
            out["model/embedding_scale"] = _scalar(param)
    return out
