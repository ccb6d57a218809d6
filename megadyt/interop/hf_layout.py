"""Where each megadyt (megatron-core) tensor goes in a transformers LLaMA.

megatron-core fuses what LLaMA keeps apart, so two tensors are split on the way out:
- `linear_qkv` is [groups × (heads per group + 2) × head_dim, hidden]: for each query group,
  that group's query heads, then its key head, then its value head;
- `linear_fc1` is [gate; up] (SwiGLU).
Rotary embeddings are rotate-half in both, so nothing is permuted. The norm parameters keep
their meaning under the HF module's names (RMSNorm γ = `weight`; DyT/Derf `alpha`, `weight`,
`shift`, `bias`), and the DyT/Derf embedding scalar becomes `model.embed_tokens.scale`.
Every tensor of the state is placed or refused: nothing is dropped silently. `megadyt_tensors`
is the inverse (Hugging Face -> megadyt), reading one tensor at a time; import -> export is
bitwise the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from megadyt.config.schema import ModelConfig
from megadyt.errors import MegadytError

NORM_PARAMS = ("weight", "alpha", "shift", "bias")
# megatron-core's norm slot -> the HF LLaMA module in the same place
LAYER_NORMS = {
    "input_layernorm": "input_layernorm",
    "pre_mlp_layernorm": "post_attention_layernorm",
}


def head_dim(model: ModelConfig) -> int:
    return model.hidden_size // model.num_attention_heads


def split_qkv(qkv: torch.Tensor, model: ModelConfig):
    """megatron-core's fused [q; k; v per group] weight -> (q_proj, k_proj, v_proj) weights."""
    groups, d = model.kv_heads, head_dim(model)
    per_group = model.num_attention_heads // groups
    grouped = qkv.reshape(groups, per_group + 2, d, qkv.shape[-1])
    q = grouped[:, :per_group].reshape(groups * per_group * d, -1)
    k = grouped[:, per_group].reshape(groups * d, -1)
    v = grouped[:, per_group + 1].reshape(groups * d, -1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig
) -> torch.Tensor:
    """(q_proj, k_proj, v_proj) weights -> megatron-core's fused [q; k; v per group] weight."""
    groups, d, hidden = model.kv_heads, head_dim(model), model.hidden_size
    per_group = model.num_attention_heads // groups
    parts = []
    for name, tensor, heads in (("q_proj", q, groups * per_group), ("k_proj", k, groups),
                                ("v_proj", v, groups)):  # fmt: skip
        if tuple(tensor.shape) != (heads * d, hidden):
            raise MegadytError(
                f"self_attn.{name}.weight has shape {list(tensor.shape)}, but the model config "
                f"({model.num_attention_heads} heads, {groups} KV groups, hidden "
                f"{hidden}) needs {[heads * d, hidden]}"
            )
        parts.append(tensor.reshape(groups, heads // groups, d, hidden))
    return torch.cat(parts, dim=1).reshape(-1, hidden)


def _norm(state: dict, source: str, target: str) -> Iterator[tuple[str, torch.Tensor]]:
    for param in NORM_PARAMS:
        if f"{source}.{param}" in state:
            yield f"{target}.{param}", state[f"{source}.{param}"]


def _layer(state: dict, i: int, model: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    src, dst = f"decoder.layers.{i}", f"model.layers.{i}"
    for source, target in LAYER_NORMS.items():
        yield from _norm(state, f"{src}.{source}", f"{dst}.{target}")
    q, k, v = split_qkv(state[f"{src}.self_attention.linear_qkv.weight"], model)
    yield f"{dst}.self_attn.q_proj.weight", q
    yield f"{dst}.self_attn.k_proj.weight", k
    yield f"{dst}.self_attn.v_proj.weight", v
    yield f"{dst}.self_attn.o_proj.weight", state[f"{src}.self_attention.linear_proj.weight"]
    gate, up = state[f"{src}.mlp.linear_fc1.weight"].chunk(2, dim=0)
    yield f"{dst}.mlp.gate_proj.weight", gate.contiguous()
    yield f"{dst}.mlp.up_proj.weight", up.contiguous()
    yield f"{dst}.mlp.down_proj.weight", state[f"{src}.mlp.linear_fc2.weight"]


def hf_tensors(state: dict, model: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) for every tensor of a whole (TP=1) megadyt state dict, in model order,
    one layer at a time; MegadytError naming any tensor this layout has no place for."""
    placed = _placed_names(state, model)
    extra = sorted(k for k in state if k not in placed and not k.endswith("._extra_state"))
    if extra:
        raise MegadytError(
            f"the checkpoint has tensors the Hugging Face LLaMA layout has no place for: "
            f"{', '.join(extra[:5])}; export it with --format megadyt"
        )
    yield "model.embed_tokens.weight", state["embedding.word_embeddings.weight"]
    if "embedding.embedding_scale" in state:
        yield "model.embed_tokens.scale", state["embedding.embedding_scale"]
    for i in range(model.num_layers):
        yield from _layer(state, i, model)
    yield from _norm(state, "decoder.final_layernorm", "model.norm")
    yield "lm_head.weight", state["output_layer.weight"]


def _placed_names(state: dict, model: ModelConfig) -> set[str]:
    """The megadyt names hf_tensors reads; missing required ones are refused by name."""
    required = ["embedding.word_embeddings.weight", "output_layer.weight"]
    optional = ["embedding.embedding_scale"]
    slots = ["decoder.final_layernorm"]
    for i in range(model.num_layers):
        src = f"decoder.layers.{i}"
        required += [
            f"{src}.self_attention.linear_qkv.weight",
            f"{src}.self_attention.linear_proj.weight",
            f"{src}.mlp.linear_fc1.weight",
            f"{src}.mlp.linear_fc2.weight",
        ]
        slots += [f"{src}.{name}" for name in LAYER_NORMS]
    missing = [name for name in required + [f"{s}.weight" for s in slots] if name not in state]
    if missing:
        raise MegadytError(
            f"the checkpoint lacks {missing[0]} (and {len(missing) - 1} more), which the model "
            f"config ({model.num_layers} layers) needs: is it this run's checkpoint?"
        )
    optional += [f"{s}.{p}" for s in slots for p in NORM_PARAMS]
    return set(required) | {name for name in optional if name in state}


Reader = Callable[[str], torch.Tensor]  # HF tensor name -> tensor (read when asked)


def megadyt_tensors(
    read: Reader, names: set[str], model: ModelConfig
) -> Iterator[tuple[str, torch.Tensor]]:
    """(megadyt name, tensor) for a Hugging Face LLaMA whose tensor names are `names`, reading
    each with `read` one layer at a time. An untied model needs `lm_head.weight`; a tied one
    reuses the embedding. MegadytError names a tensor that is missing or has no place."""
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in names:
            raise MegadytError(
                f"the Hugging Face checkpoint has no tensor {name}, which a {model.num_layers}-"
                "layer LLaMA needs: is it a LLaMA checkpoint of this config's size?"
            )
        used.add(name)
        return read(name)

    def norm(source: str, target: str) -> Iterator[tuple[str, torch.Tensor]]:
        for param in NORM_PARAMS:
            if f"{source}.{param}" in names:
                yield f"{target}.{param}", take(f"{source}.{param}")

    yield "embedding.word_embeddings.weight", take("model.embed_tokens.weight")
    if "model.embed_tokens.scale" in names:
        yield "embedding.embedding_scale", take("model.embed_tokens.scale")
    for i in range(model.num_layers):
        src, dst = f"model.layers.{i}", f"decoder.layers.{i}"
        for target, source in LAYER_NORMS.items():
            yield from norm(f"{src}.{source}", f"{dst}.{target}")
        attn = f"{src}.self_attn"
        q, k, v = (take(f"{attn}.{p}_proj.weight") for p in "qkv")
        yield f"{dst}.self_attention.linear_qkv.weight", merge_qkv(q, k, v, model)
        yield f"{dst}.self_attention.linear_proj.weight", take(f"{attn}.o_proj.weight")
        gate, up = take(f"{src}.mlp.gate_proj.weight"), take(f"{src}.mlp.up_proj.weight")
        yield f"{dst}.mlp.linear_fc1.weight", torch.cat([gate, up], dim=0)
        yield f"{dst}.mlp.linear_fc2.weight", take(f"{src}.mlp.down_proj.weight")
    yield from norm("model.norm", "decoder.final_layernorm")
    tied = "lm_head.weight" not in names
    yield "output_layer.weight", take("model.embed_tokens.weight" if tied else "lm_head.weight")
    unused = sorted(n for n in names - used if not n.endswith("rotary_emb.inv_freq"))
    if unused:
        raise MegadytError(
            f"the Hugging Face checkpoint has tensors megadyt's LLaMA has no place for: "
            f"{', '.join(unused[:4])} (biases or another architecture?)"
        )
