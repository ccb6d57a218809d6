"""Load a `Config` from YAML plus `--set section.key=value` overrides, with typed checking.

YAML is parsed with the safe loader; every key is checked against the dataclass fields and every
value against the field's type, so a typo fails at start-up with the key's dotted name.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from megadyt.config.schema import Config
from megadyt.config.validate import validate_config
from megadyt.errors import ConfigError

# Renamed keys: old dotted name -> (new name, what it means). The old name is still read (YAML,
# --set and stored configs) as exactly the new key; `load_config` prints one line per old key.
RENAMED_KEYS: dict[str, tuple[str, str]] = {
    # Ours is an absolute stop step; Megatron's option of the old name is periodic: it misled.
    "train.exit_interval": ("train.stop_at_step", "the same absolute step"),
}

# YAML 1.1 (PyYAML) reads exponent floats without a dot, such as 1e-3, as strings.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
    elif origin is Literal:
        # YAML 1.1 reads on/off as booleans; map them back for literals spelled "on"/"off".
        if isinstance(value, bool) and ("on" if value else "off") in typing.get_args(tp):
            return "on" if value else "off"
        if value in typing.get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            (item_type,) = typing.get_args(tp)
            return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
    )


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"config section '{prefix or 'top level'}' must be a mapping, got {data!r}"
        )
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown config key '{where}' (valid keys here: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `section.key=value`; the value is read as a YAML scalar (so 2 is int, true bool)."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected section.key=value, e.g. --set train.steps=10")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set '{text}': key must be section.key, e.g. parallel.tp=2")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set '{text}': value is not valid YAML ({exc.__class__.__name__})")
    return path, value


def rename_keys(data: dict, renamed: set[str] | None = None) -> dict:
    """Move every old key of RENAMED_KEYS in `data` to its new name (in place); record the old
    names found in `renamed`. Setting both names is refused: which one wins would be a guess."""
    for old, (new, _) in RENAMED_KEYS.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        node = data.get(section)
        if isinstance(node, dict) and old_key in node:
            if new_key in node:
                raise ConfigError(f"config sets both {old} and {new}; keep only {new}")
            node[new_key] = node.pop(old_key)
            if renamed is not None:
                renamed.add(old)
    return data


def merge_overrides(data: dict, overrides: list[str], renamed: set[str] | None = None) -> dict:
    """Apply `--set` texts to `data` in order (old key names are written to their new names and
    recorded in `renamed`)."""
    for text in overrides:
        path, value = parse_override(text)
        dotted = ".".join(path)
        if dotted in RENAMED_KEYS:
            path = RENAMED_KEYS[dotted][0].split(".")
            if renamed is not None:
                renamed.add(dotted)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set '{text}': '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return data


def _directory_error(path: Path) -> ConfigError:
    """`--config configs/tiny` is a common slip: say it is a directory and name files in it."""
    files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        hint = "pass a YAML file, e.g. configs/tiny/dyt.yaml"
    elif len(files) <= 3:
        hint = f"pass one of its files: {', '.join(str(f) for f in files)}"
    else:
        hint = f"pass one of its {len(files)} YAML files, e.g. {files[0]}"
    return ConfigError(f"config '{path}' is a directory, not a YAML file; {hint}")


def read_yaml(path: str | Path) -> dict:
    """The YAML mapping at `path`; a missing file, a directory, bad YAML, an empty file or a
    top level that is not a mapping is a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise _directory_error(path)
    if not path.is_file():
        raise ConfigError(
            f"config file '{path}' not found; pass an existing YAML, e.g. configs/tiny/dyt.yaml"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{path}'{where}: not valid YAML; fix the syntax there")
    if data is None:  # an empty file would silently train the defaults: never what was meant
        raise ConfigError(
            f"config file '{path}' is empty; give a YAML mapping of sections, e.g. copy "
            "configs/tiny/dyt.yaml"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}': top level must be a mapping of sections, got "
            f"{type(data).__name__}"
        )
    return data


def config_from_dict(data: dict) -> Config:
    """A Config from a nested dict (e.g. one stored with a checkpoint; old key names accepted
    silently: the user cannot edit a stored config). Not validated."""
    return _build(Config, rename_keys(copy.deepcopy(data)), "")


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, world_size: int | None = None
) -> Config:
    """Read YAML (or defaults when `path` is None), apply overrides, validate, return Config."""
    renamed: set[str] = set()
    data = rename_keys(read_yaml(path), renamed) if path is not None else {}
    data = merge_overrides(data, list(overrides or []), renamed)
    for old in sorted(renamed):
        new, meaning = RENAMED_KEYS[old]
        print(f"megadyt: warning: {old} is deprecated; use {new} ({meaning})", file=sys.stderr)
    return validate_config(config_from_dict(data), world_size)
