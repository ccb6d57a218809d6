"""Read a Hugging Face LLaMA directory as megadyt tensors, checked against a megadyt config.

A directory holds `config.json` and its weights as safetensors: one `model.safetensors`, or
shards listed by `model.safetensors.index.json`. Tensors are read one at a time from the
memory-mapped files (`safetensors.safe_open`), so an import holds one layer's worth of them
beyond what it has already converted. Everything a user can get wrong is refused in one line
naming the file, key or tensor: a missing or unreadable file, a config of another shape
(with the `--set` that would match it), another architecture, a tensor of the wrong shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from megadyt.config.schema import ModelConfig
from megadyt.errors import MegadytError
from megadyt.interop.hf_config import MODEL_TYPE, llama_config
from megadyt.interop.hf_layout import megadyt_tensors
from megadyt.norms.registry import LLAMA_NORM

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# config.json's shape keys -> the megadyt model key that sets each (`hf_config.llama_config`
# owns the values; this names the `--set` that would match a directory)
SHAPE_KEYS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "ffn_hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
}


class HFCheckpoint:
    """A Hugging Face LLaMA directory: its config, its tensor names, each tensor on demand."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise MegadytError(f"{self.folder} has no config.json: is it a transformers model?")
        try:
            self.config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise MegadytError(f"cannot read {config_path} ({exc})") from None
        self._open: dict[str, object] = {}
        self.files = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        index = self.folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise MegadytError(f"cannot read {index} ({exc!r}); restore the file") from None
            missing = sorted({f for f in weight_map.values() if not (self.folder / f).is_file()})
            if missing:
                raise MegadytError(f"{self.folder / missing[0]}, listed in {index.name}, is gone")
            return weight_map
        if (self.folder / SINGLE_FILE).is_file():
            return {name: SINGLE_FILE for name in self._handle(SINGLE_FILE).keys()}
        found = "pytorch_model.bin" if any(self.folder.glob("pytorch_model*.bin")) else "none"
        raise MegadytError(
            f"{self.folder} has no {SINGLE_FILE} or {INDEX_FILE} (weights found: {found}); "
            "save the model with safe_serialization=True"
        )

    def _handle(self, file: str):
        if file not in self._open:
            from safetensors import safe_open

            try:
                self._open[file] = safe_open(str(self.folder / file), framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors' errors have no common base
                raise MegadytError(
                    f"{self.folder / file} is not a readable safetensors file ({exc}); "
                    "restore or re-download it"
                ) from None
        return self._open[file]

    @property
    def names(self) -> set[str]:
        return set(self.files)

    def read(self, name: str) -> torch.Tensor:
        try:
            return self._handle(self.files[name]).get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - safetensors' errors have no common base
            raise MegadytError(
                f"cannot read {name} from {self.folder / self.files[name]} ({exc}); restore or "
                "re-download it"
            ) from None

    @property
    def norm(self) -> str:
        """The norm the model was trained with: RMSNorm for LLaMA, else megadyt's record."""
        if self.config.get("model_type") == MODEL_TYPE:
            return self.config.get("megadyt_norm", "dyt")
        return LLAMA_NORM


def check_config(hf: HFCheckpoint, model: ModelConfig) -> None:
    """Refuse a directory whose architecture or shape is not `model`'s, naming the key."""
    kind = hf.config.get("model_type")
    if kind not in ("llama", MODEL_TYPE):
        raise MegadytError(
            f"{hf.folder}/config.json has model_type {kind!r}; megadyt imports LLaMA models"
        )
    ours = llama_config(model)
    for key, name in SHAPE_KEYS.items():
        theirs = hf.config.get(key, hf.config.get("num_attention_heads"))
        if theirs != getattr(ours, key):
            raise MegadytError(
                f"{hf.folder}/config.json has {key}={theirs} but the config has model.{name}="
                f"{getattr(ours, key)}; use a config of this model's shape (--set model.{name}="
                f"{theirs})"
            )
    eps = hf.config.get("rms_norm_eps", model.norm_eps)
    if kind == "llama" and eps != model.norm_eps:
        raise MegadytError(
            f"{hf.folder}/config.json has rms_norm_eps={eps} but the config has "
            f"model.norm_eps={model.norm_eps} (--set model.norm_eps={eps})"
        )
    _check_computation(hf, model)
    theta = (hf.config.get("rope_parameters") or {}).get("rope_theta", hf.config.get("rope_theta"))
    if theta is not None and float(theta) != float(model.rotary_base):
        raise MegadytError(
            f"{hf.folder}/config.json has rope_theta={theta} but the config has "
            f"model.rotary_base={model.rotary_base} (--set model.rotary_base={int(theta)})"
        )


def _check_computation(hf: HFCheckpoint, model: ModelConfig) -> None:
    """Refuse what the shapes do not show: RoPE scaling (LLaMA 3.1's "llama3", YaRN, ...),
    an activation other than SiLU, a head size other than hidden / heads."""
    rope = hf.config.get("rope_parameters") or hf.config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise MegadytError(
            f"{hf.folder}/config.json uses RoPE scaling {kind!r}; megadyt's rotary embedding has "
            "none, so the imported model would compute something else"
        )
    if hf.config.get("hidden_act", "silu") != "silu":
        raise MegadytError(
            f"{hf.folder}/config.json has hidden_act={hf.config['hidden_act']!r}; megadyt's "
            "LLaMA uses SwiGLU (silu)"
        )
    head_dim = hf.config.get("head_dim") or model.hidden_size // model.num_attention_heads
    if head_dim * model.num_attention_heads != model.hidden_size:
        raise MegadytError(
            f"{hf.folder}/config.json has head_dim={head_dim}, not hidden_size / heads = "
            f"{model.hidden_size // model.num_attention_heads}, which megadyt's attention needs"
        )


def read_megadyt_tensors(
    hf: HFCheckpoint, model: ModelConfig, expected: dict[str, torch.Size]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The directory's tensors under megadyt's names, each checked against `expected` (the
    megadyt model's parameter shapes at TP=1). A name `expected` lacks is refused; a norm
    parameter the model has and the directory lacks is the caller's to fill."""
    for name, tensor in megadyt_tensors(hf.read, hf.names, model):
        if name not in expected:
            raise MegadytError(
                f"{hf.folder} has {name} (megadyt's name), which a model.norm={model.norm} model "
                "has no place for: is the config's norm the model's?"
            )
        if tensor.shape != expected[name]:
            raise MegadytError(
                f"{hf.folder}: tensor {name} has shape {list(tensor.shape)}, the config's model "
                f"needs {list(expected[name])}"
            )
        yield name, tensor
