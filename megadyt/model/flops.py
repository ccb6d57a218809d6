"""Model FLOPs per trained token, the numerator of TFLOP/s and MFU (and of the planner's time).

Why here: it is a property of the model shape alone, like the parameter counts it is built on,
so training metrics and planning both read it from the model package.
"""

from __future__ import annotations

from megadyt.config.schema import ModelConfig
from megadyt.model.counting import count_parameters


def flops_per_token(model: ModelConfig) -> float:
    """Training FLOPs per token: 6 × matmul parameters (attention, MLP, output projection) plus
    causal-agnostic attention scores and values, 12·L·s·d. Takes `cfg.model`."""
    counts = count_parameters(model)
    matmul_params = counts.attention + counts.mlp + counts.output
    return 6.0 * matmul_params + 12.0 * model.num_layers * model.seq_length * model.hidden_size
