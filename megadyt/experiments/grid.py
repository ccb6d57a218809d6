"""Grid specs for `megadyt sweep`: `--grid section.key=v1,v2,...`, their product, cell names.

Values stay the strings the user typed: each becomes one `--set key=value` of a cell, parsed
by the config loader like any other override, so a grid accepts exactly what `--set` accepts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from megadyt.config import load_config
from megadyt.config.schema import Config
from megadyt.errors import ConfigError, MegadytError

# Keys the sweep sets itself for every cell.
RESERVED_KEYS = {
    "run.dir": "the sweep gives every cell its own run dir under --output",
    "train.seed": "use --seeds N instead",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[str, ...]


def parse_axis(spec: str) -> GridAxis:
    """`model.alpha0_ffn=0.5,1,2` -> GridAxis('model.alpha0_ffn', ('0.5', '1', '2'))."""
    if "=" not in spec:
        raise MegadytError(
            f"--grid '{spec}': expected section.key=v1,v2,... e.g. --grid model.alpha0_ffn=0.5,1,2"
        )
    key, raw = (part.strip() for part in spec.split("=", 1))
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise MegadytError(f"--grid '{spec}': the key must be section.key, e.g. model.alpha0_ffn")
    if key in RESERVED_KEYS:
        raise MegadytError(f"--grid '{spec}': {key} cannot be swept ({RESERVED_KEYS[key]})")
    values = tuple(v.strip() for v in raw.split(","))
    if not raw.strip() or not all(values):
        raise MegadytError(f"--grid '{spec}': give at least one value and no empty ones")
    if len(set(values)) != len(values):
        raise MegadytError(f"--grid '{spec}': a value is listed twice")
    return GridAxis(key, values)


def parse_grid(specs: list[str]) -> list[GridAxis]:
    axes = [parse_axis(spec) for spec in specs]
    keys = [axis.key for axis in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise MegadytError(f"--grid {key} is given twice; list all its values in one --grid")
    return axes


def assignments(axes: list[GridAxis]) -> list[dict[str, str]]:
    """Every combination of one value per axis, in the order the axes were given."""
    keys = [axis.key for axis in axes]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(a.values for a in axes))]


def cell_name(assignment: dict[str, str]) -> str:
    """A directory name for one grid point, e.g. 'model.alpha0_ffn=0.5__model.norm=dyt'."""
    if not assignment:
        return "base"
    return "__".join(_UNSAFE.sub("_", f"{k}={v}") for k, v in assignment.items())


def cell_config(
    config: str, overrides: list[str], assignment: dict[str, str], seed: int, run_dir: str
) -> Config:
    """The validated config of one cell; a bad grid key or value names the --grid it came from.
    (Validate the base config first, so its own errors are not blamed on the grid.)"""
    cell = [f"{k}={v}" for k, v in assignment.items()]
    try:
        return load_config(config, [*overrides, *cell, f"train.seed={seed}", f"run.dir={run_dir}"])
    except ConfigError as exc:
        raise ConfigError(f"--grid {', '.join(cell)}: {exc}") from exc
