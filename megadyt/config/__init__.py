"""Typed configuration: dataclasses, YAML loading with `--set` overrides, validation."""

from megadyt.config.loader import config_from_dict, load_config, merge_overrides, read_yaml
from megadyt.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)

__all__ = [
    "Config",
    "DataConfig",
    "ModelConfig",
    "ParallelConfig",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "load_config",
    "merge_overrides",
    "read_yaml",
]
