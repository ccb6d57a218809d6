"""The LLaMA model family on megatron-core, with a configurable norm."""

from megadyt.model.counting import ParameterCounts, count_parameters
from megadyt.model.flops import flops_per_token
from megadyt.model.llama import (
    LlamaModel,
    build_model,
    norm_display_name,
    norm_modules,
    norm_parameter_names,
    norm_scalar_parameter_names,
    norm_scalars,
)

__all__ = [
    "LlamaModel",
    "ParameterCounts",
    "build_model",
    "count_parameters",
    "flops_per_token",
    "norm_display_name",
    "norm_modules",
    "norm_parameter_names",
    "norm_scalar_parameter_names",
    "norm_scalars",
]
