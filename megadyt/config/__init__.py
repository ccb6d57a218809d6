"""Typed configuration: dataclasses, YAML loading with `--set` overrides, validation.

Dependencies run one way: `schema` (the dataclasses) <- `validate` (cross-field checks) <-
`loader` (YAML, `--set`, renamed keys; validates what it loads).
"""

from megadyt.config.loader import config_from_dict, load_config, merge_overrides, read_yaml
from megadyt.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)
from megadyt.config.validate import validate_config

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
    "validate_config",
]
