"""Write a megadyt model as a Hugging Face transformers directory.

Layout (what `from_pretrained` reads): `config.json`, `generation_config.json`, the weights as
`model-0000I-of-0000N.safetensors` shards of at most `shard_bytes` each with
`model.safetensors.index.json`, and, unless the model is a plain LLaMA, `modeling_megadyt.py`
(loaded with `trust_remote_code=True`). The directory is written under a temporary name and
renamed when complete, so a directory under the final name is always whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

import torch

from megadyt.atomic import atomic_output, new_file_mode
from megadyt.config.schema import Config
from megadyt.errors import MegadytError
from megadyt.interop import hf_config
from megadyt.interop.hf_layout import hf_tensors
from megadyt.interop.hf_tokenizer import write_tokenizer_files

SHARD_BYTES = 5 * 10**9  # transformers' own default shard size
MODELING_FILE = Path(__file__).with_name(f"{hf_config.MODELING_MODULE}.py")
INDEX_FILE = "model.safetensors.index.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportSummary(NamedTuple):
    parameters: int
    shards: int
    plain_llama: bool
    tokenizer_texts: int  # texts the tokenizer was checked on (0: no tokenizer written)


class TokenizerSource(NamedTuple):
    """The run's SentencePiece model (None: write no tokenizer files), its (BOS, EOS) ids, and
    the texts (e.g. a held-out corpus) on which the exported tokenizer must give its ids
    before it is written."""

    model_path: str | None
    bos_id: int | None
    eos_id: int | None
    check_texts: list[str]


def _write_shards(tensors, folder: Path, dtype: torch.dtype, shard_bytes: int):
    """Save the tensors in order into shards of at most shard_bytes (a larger tensor gets a
    shard of its own); returns ({name: shard file}, total bytes, parameter count, shards)."""
    from safetensors.torch import save_file

    parts: list[list[str]] = []
    chunk: dict[str, torch.Tensor] = {}
    size = total = count = 0

    def flush() -> None:
        nonlocal chunk, size
        if chunk:
            part = folder / f"part-{len(parts)}"
            save_file(chunk, str(part), metadata={"format": "pt"})
            os.chmod(part, new_file_mode())  # safetensors writes 0600; the rest get the umask's
            parts.append(list(chunk))
            chunk, size = {}, 0

    for name, tensor in tensors:
        tensor = tensor.detach().to(dtype).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > shard_bytes:
            flush()
        chunk[name] = tensor
        size, total, count = size + nbytes, total + nbytes, count + tensor.numel()
    flush()
    weight_map = {}
    for i, names in enumerate(parts):
        shard = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        os.replace(folder / f"part-{i}", folder / shard)
        weight_map.update(dict.fromkeys(names, shard))
    return weight_map, total, count, len(parts)


def write_hf_export(
    cfg: Config,
    state: dict,
    out: Path,
    dtype: str,
    tokenizer: TokenizerSource,
    shard_bytes: int = SHARD_BYTES,
) -> ExportSummary:
    """Write `state` (a whole TP=1 megadyt state dict) as a transformers directory at `out`,
    with the tokenizer's files when it names a model (its ids go into the configs either way)."""
    if dtype not in DTYPES:
        raise MegadytError(f"unknown export dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if out.exists():
        raise MegadytError(f"{out} exists; export into a new directory (or delete it first)")
    m = cfg.model
    tensors = hf_tensors(state, m)  # a generator: unknown or missing tensors are refused on
    # its first read, inside the temporary directory (removed on any error)
    bos_id, eos_id = tokenizer.bos_id, tokenizer.eos_id
    with atomic_output(out) as tmp:
        folder = Path(tmp)
        folder.mkdir()
        checked = 0
        if tokenizer.model_path:  # first: a tokenizer that differs stops the export early
            checked = write_tokenizer_files(
                folder, tokenizer.model_path, tokenizer.check_texts, m.seq_length
            )
        weight_map, total, count, shards = _write_shards(
            tensors, folder, DTYPES[dtype], shard_bytes
        )
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        config = hf_config.hf_config_dict(m, dtype, bos_id, eos_id)
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        plain = hf_config.is_plain_llama(m)
        if not plain:
            shutil.copyfile(MODELING_FILE, folder / MODELING_FILE.name)
    return ExportSummary(count, shards, plain, checked)
