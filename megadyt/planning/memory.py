"""Per-device memory model of one training rank (see README.md in this folder for the derivation).

All sizes are bytes. The model follows what megadyt builds: a megatron-core LLaMA (untied
embeddings, SwiGLU, GQA, RoPE, no dropout) with TP (+SP), wrapped by DeepSpeed ZeRO over the
data-parallel group, bf16 on GPU and fp32 on CPU. No pipeline parallelism: every layer of one
micro-batch is live at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from megadyt.config.schema import Config
from megadyt.model.counting import count_parameters
from megadyt.model.loss import chunk_tokens, fused_loss_applies

GB = 1e9

# GPU: CUDA context, NCCL communicators and cuBLAS workspaces, per rank.
GPU_RUNTIME_BYTES = 3.0 * GB
# DeepSpeed ZeRO's reduce/all-gather bucket (reduce_bucket_size default 5e8 elements).
ZERO_BUCKET_ELEMENTS = 5e8
# ZeRO-3 gathered ("live") parameters (stage3_max_live_parameters default 1e9 elements).
ZERO3_LIVE_ELEMENTS = 1e9
# Caching-allocator fragmentation, as a fraction of the activation memory.
FRAGMENTATION = 0.10
# CPU: resident set of one process after importing torch, megatron-core and DeepSpeed and
# initialising gloo, DeepSpeed and the data pipeline, measured with a near-empty model
# (`megadyt train`, 1 layer of width 16, 16 tokens; peak RSS 429 MB on x86-64, torch 2.x).
CPU_BASELINE_BYTES = 430e6
# torch and megatron-core import triton when it is installed (CPU machines get it for the
# kernels' interpreter tests): +105 MB of import RSS measured on the same machine.
CPU_TRITON_IMPORT_BYTES = 105e6


def cpu_baseline_bytes() -> float:
    """The CPU import baseline for this environment."""
    import importlib.util

    triton = importlib.util.find_spec("triton") is not None
    return CPU_BASELINE_BYTES + (CPU_TRITON_IMPORT_BYTES if triton else 0.0)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per rank. `activations` is for the configured recompute mode; the `activations_*`
    fields give all three modes for comparison."""

    weights: float
    grads: float
    optimizer: float  # fp32 master + Adam m, v on the device (0 when offloaded)
    activations: float
    overhead: float
    activations_none: float
    activations_selective: float
    activations_full: float
    optimizer_cpu: float  # optimizer states moved to host memory by offload, per rank

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.overhead

    def as_gb(self) -> dict[str, float]:
        out = {k: round(v / GB, 3) for k, v in self.__dict__.items()}
        out["total"] = round(self.total / GB, 3)
        return out


def params_per_rank(cfg: Config, tp: int | None = None) -> float:
    """Parameters held by one TP rank (at `tp`, default the config's): matmul weights split by
    TP, norm parameters replicated."""
    c = count_parameters(cfg.model)
    return (c.embedding + c.output + c.attention + c.mlp) / (tp or cfg.parallel.tp) + c.norm


def optimizer_bytes_per_param(cfg: Config, bf16: bool) -> int:
    """Adam m, v (fp32) and the fp32 master copy, which DeepSpeed keeps under ZeRO or under
    bf16; plain fp32 ZeRO-0 steps torch's AdamW on the weights themselves (no copy). The same
    bytes are held in memory and written to a checkpoint."""
    return 8 + (4 if (cfg.parallel.zero_stage > 0 or bf16) else 0)


def activation_bytes(cfg: Config, recompute: str, act_bytes: int) -> float:
    """Activations kept for the backward pass of one micro-batch on one rank.

    Per layer and token, in elements (Korthikanti et al. 2022, adapted to SwiGLU, GQA and no
    dropout): norm inputs and matmul inputs 4h (split by TP only under SP), Q, K, V
    h + 2·h_kv, attention context h, SwiGLU fc1 output 2f and fc2 input f (split by TP), and
    the softmax probabilities a·s (split by TP; dropped by selective recompute). Full recompute
    keeps only each layer's input (h, split under SP) plus one layer's working set, live while
    that layer is recomputed.
    """
    m, p = cfg.model, cfg.parallel
    t = p.tp
    seq_shard = t if p.sp else 1
    h, f, s, a = m.hidden_size, m.ffn_hidden_size, m.seq_length, m.num_attention_heads
    h_kv = m.kv_heads * (h // a)
    tokens = s * cfg.train.micro_batch_size
    replicated = 4 * h / seq_shard
    sharded = (2 * h + 2 * h_kv + 3 * f) / t
    scores = a * s / t
    layer_full = replicated + sharded + scores  # per token, no recompute
    if recompute == "none":
        per_layer = layer_full
        stored = m.num_layers * per_layer
    elif recompute == "selective":
        stored = m.num_layers * (replicated + sharded)
    elif recompute == "full":
        stored = m.num_layers * h / seq_shard + layer_full
    else:  # pragma: no cover - validated by the config loader
        raise ValueError(recompute)
    # Embedding output and final-norm input (h each, split under SP).
    head = 2 * h / seq_shard * act_bytes
    # Backward transient: one layer's activation gradients.
    transient = (replicated + sharded) * act_bytes
    return tokens * (stored * act_bytes + head + transient) + loss_bytes(cfg, act_bytes)


def loss_bytes(cfg: Config, act_bytes: int) -> float:
    """The logits and the loss of one micro-batch on one rank, at their peak (the loss's own
    forward and backward, while every layer's activations are held).

    megatron-core's path: the vocab shard's fp32 logits, which its cross entropy turns into the
    softmax it keeps and then, in place, into the gradient; in half precision also the logits
    in the activation dtype (forward) or the gradient cast back to it (backward). So
    tokens · V/tp · (4 + a), or 4 in fp32: 262 MB measured for 2048 × 32,000 fp32 logits.
    Chunked (`model.fused_loss`, megadyt.model.loss): the same for one chunk's tokens, plus the
    per-token log-sum-exp kept for the backward and, under SP, the gathered input it keeps.
    """
    m, p = cfg.model, cfg.parallel
    tokens = m.seq_length * cfg.train.micro_batch_size
    vocab_shard = m.vocab_size // p.tp
    per_row = vocab_shard * (4 + (act_bytes if act_bytes < 4 else 0))
    if not fused_loss_applies(m.fused_loss, tokens, m.hidden_size, vocab_shard):
        return tokens * per_row
    chunk = chunk_tokens(tokens, m.hidden_size, vocab_shard)
    gathered = m.hidden_size * act_bytes * (1 - 1 / p.tp) if p.sp else 0.0
    return chunk * per_row + tokens * (4 + gathered)


def memory_breakdown(cfg: Config, dp: int, bf16: bool, on_gpu: bool = True) -> MemoryBreakdown:
    """Bytes per rank for `cfg` at data-parallel size `dp`."""
    p = cfg.parallel
    n = params_per_rank(cfg)
    w_bytes = 2 if bf16 else 4
    weights = n * w_bytes
    # Gradients: model dtype; ZeRO-0 with bf16 also keeps fp32 accumulation buffers
    # (DeepSpeed's BF16 optimizer). ZeRO-2/3 shard them over DP.
    grads = n * w_bytes + (n * 4 if bf16 and p.zero_stage == 0 else 0)
    if p.zero_stage >= 2:
        grads /= dp
    if p.zero_stage >= 3:
        weights /= dp
    per_param = optimizer_bytes_per_param(cfg, bf16)
    optimizer = n * per_param / (dp if p.zero_stage >= 1 or bf16 else 1)
    optimizer_cpu = 0.0
    if p.offload_optimizer:
        optimizer_cpu, optimizer = optimizer, 0.0
    a_bytes = 2 if bf16 else 4
    acts = {r: activation_bytes(cfg, r, a_bytes) for r in ("none", "selective", "full")}
    activations = acts[p.recompute]
    if on_gpu:
        overhead = GPU_RUNTIME_BYTES + FRAGMENTATION * activations
        if p.zero_stage >= 1:
            overhead += ZERO_BUCKET_ELEMENTS * w_bytes
        if p.zero_stage >= 3:
            overhead += min(ZERO3_LIVE_ELEMENTS, n) * w_bytes
    else:
        overhead = cpu_baseline_bytes()
    return MemoryBreakdown(
        weights=weights,
        grads=grads,
        optimizer=optimizer,
        activations=activations,
        overhead=overhead,
        activations_none=acts["none"],
        activations_selective=acts["selective"],
        activations_full=acts["full"],
        optimizer_cpu=optimizer_cpu,
    )
