"""Memory of `megadyt eval` per device, and which TP it needs (see README.md in this folder).

Evaluation holds one TP shard of the weights in the eval dtype (bf16 on GPU, fp32 on CPU) and
one batch's forward: no gradients, no optimizer state, and without autograd each layer's
activations are freed once the next layer has its input. Per token of the batch (b × s):
- one layer's working set: norm input, Q/K/V, attention context and the SwiGLU fc1 output and
  fc2 input, `4h + (2·h_kv + 3f)/tp` elements in the eval dtype (SDPA keeps no s × s scores);
- the logits: the vocabulary shard `V/tp` in the eval dtype; at TP > 1 the gather's buffer and
  its concatenation, `V` each (`evaluation.tp_forward`, megatron-core's gather along the last
  dim); the float32 copy and the float32 log-softmax, `V·8` bytes.
Plus the runtime (CUDA context, NCCL, cuBLAS) as in training, or the CPU import baseline.
A checkpoint saved at TP=N evaluates at TP=N (each rank its own shard) or at TP=1 (merged).
"""

from __future__ import annotations

from megadyt.config.schema import Config
from megadyt.planning.memory import GB, GPU_RUNTIME_BYTES, cpu_baseline_bytes, params_per_rank

EVAL_BATCH_SIZE = 8  # `megadyt eval --batch-size` default


def eval_memory_bytes(cfg: Config, tp: int, batch_size: int, on_gpu: bool = True) -> float:
    """Peak bytes per device of `megadyt eval` at tensor-parallel size `tp`."""
    m = cfg.model
    w = 2 if on_gpu else 4
    n = params_per_rank(cfg, tp)
    h, f, v = m.hidden_size, m.ffn_hidden_size, m.vocab_size
    h_kv = m.kv_heads * (h // m.num_attention_heads)
    tokens = batch_size * m.seq_length
    layer = (4 * h + (2 * h_kv + 3 * f) / tp) * w
    gathered = 2 * v * w if tp > 1 else 0.0
    logits = v / tp * w + gathered + v * 8
    runtime = GPU_RUNTIME_BYTES if on_gpu else cpu_baseline_bytes()
    return n * w + tokens * (layer + logits) + runtime


def eval_tp_choice(
    cfg: Config, device_memory_gb: float, batch_size: int = EVAL_BATCH_SIZE, on_gpu: bool = True
) -> dict:
    """Eval memory at TP=1 and at the training TP, and the smallest of the two that fits
    (None: neither; lower --batch-size, or train with a larger TP)."""
    sizes = sorted({1, cfg.parallel.tp})
    memory = {tp: eval_memory_bytes(cfg, tp, batch_size, on_gpu) for tp in sizes}
    fitting = [tp for tp in sizes if memory[tp] <= device_memory_gb * GB]
    return {
        "batch_size": batch_size,
        "memory_gb": {str(tp): round(b / GB, 3) for tp, b in memory.items()},
        "smallest_tp": fitting[0] if fitting else None,
    }
