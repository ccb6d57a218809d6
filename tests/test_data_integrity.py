"""Damaged indexed datasets (flipped .idx bytes, truncated .bin, foreign headers) are refused
with one line naming the file, the first bad record and the fix, before training reads them."""

from __future__ import annotations

import json
import os
import shutil
import struct

import numpy as np
import pytest
from helpers import clean_env, run_cli
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megadyt.config.schema import Config
from megadyt.data.datasets import build_datasets
from megadyt.data.integrity import DTYPES, HEADER, check_indexed_dataset
from megadyt.data.prepare import prepare_data
from megadyt.data.spm import train_sentencepiece
from megadyt.data.tokenizer import load_tokenizer
from megadyt.errors import MegadytError

DOCS = 60


def _text(i: int) -> str:
    return f"document {i}: " + " ".join(f"word{(i * 7 + k) % 53}" for k in range(10 + i % 25))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(tokenizer .model, prefix) of a small dataset written by prepare-data's own code."""
    root = tmp_path_factory.mktemp("integrity")
    texts = [_text(i) for i in range(DOCS)]
    model = train_sentencepiece(texts, 300, str(root / "tok.model"), num_threads=1)
    shard = root / "docs.jsonl"
    shard.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepare_data([str(shard)], model, str(root / "intact"), progress=False)
    return model, str(root / "intact")


def _copy(prefix: str, tmp_path) -> str:
    out = str(tmp_path / "copy")
    for suffix in (".bin", ".idx"):
        shutil.copyfile(prefix + suffix, out + suffix)
    return out


def _index(prefix: str):
    """(sequence count, sequence lengths, sequence pointers) as megatron-core reads them."""
    index = IndexedDataset(prefix).index
    return len(index), index.sequence_lengths.copy(), index.sequence_pointers.copy()


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _refusal(prefix: str) -> str:
    with pytest.raises(MegadytError) as info:
        check_indexed_dataset(prefix)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith(f"`megadyt prepare-data --input SOURCE --output-prefix {prefix}`")
    return message


def test_intact_datasets_pass(dataset, tmp_path):
    _, prefix = dataset
    assert check_indexed_dataset(prefix) is IndexedDataset(prefix).index.dtype
    # a multimodal index (one int8 mode per sequence after the document indices) is intact too
    builder = IndexedDatasetBuilder(str(tmp_path / "mm.bin"), dtype=np.int32, multimodal=True)
    for n in (3, 1, 4):
        builder.add_document(np.arange(n), [n], modes=[1])
    builder.finalize(str(tmp_path / "mm.idx"))
    assert check_indexed_dataset(str(tmp_path / "mm")) is np.int32


def test_dtype_codes_match_megatron():
    assert all(DType.dtype_from_code(code) is dtype for code, dtype in DTYPES.items())


@pytest.mark.parametrize("flip", [0xFF, 0x01], ids=["negative", "garbled"])
def test_flipped_sequence_length(dataset, tmp_path, flip):
    prefix = _copy(dataset[1], tmp_path)
    _, lengths, _ = _index(prefix)
    offset = HEADER.size + 4 * 17 + (3 if flip == 0xFF else 1)  # high byte: sign; else: size
    with open(prefix + ".idx", "rb") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
    _patch(prefix + ".idx", offset, bytes([byte ^ flip]))
    bad = int(_index(prefix)[1][17])  # megatron-core reads it without complaint
    assert bad != lengths[17] and (bad < 0) == (flip == 0xFF)
    message = _refusal(prefix)
    assert message.startswith(f"{prefix}.idx is damaged: sequence 17 has length {bad}")


def test_bad_pointer_names_its_sequence(dataset, tmp_path):
    prefix = _copy(dataset[1], tmp_path)
    count, _, pointers = _index(prefix)
    _patch(prefix + ".idx", HEADER.size + 4 * count + 8 * 5, struct.pack("<q", pointers[5] + 2))
    message = _refusal(prefix)
    assert f"{prefix}.idx is damaged: sequence 5 starts at byte {pointers[5] + 2}" in message


def test_truncated_bin(dataset, tmp_path):
    prefix = _copy(dataset[1], tmp_path)
    _, _, pointers = _index(prefix)
    size = os.path.getsize(prefix + ".bin")
    cut = int(pointers[30]) + 3  # inside sequence 30
    with open(prefix + ".bin", "r+b") as handle:
        handle.truncate(cut)
    message = _refusal(prefix)
    assert message.startswith(f"{prefix}.bin is damaged: {cut} bytes (truncated?): sequence 30")
    _patch(prefix + ".bin", cut, b"\0" * (size + 1 - cut))  # one byte too many
    assert "1 more than its .idx describes" in _refusal(prefix)


@pytest.mark.parametrize(
    "offset, data, expected",
    [
        (0, b"GPT2", "header magic b'GPT2IDX"),
        (9, struct.pack("<Q", 2), "header version 2 is not 1"),
        (17, bytes([6]), "token dtype code 6"),
        (18, struct.pack("<Q", DOCS + 1), f"but its header ({DOCS + 1} sequences, {DOCS + 1} d"),
    ],
    ids=["magic", "version", "dtype", "count"],
)
def test_bad_header(dataset, tmp_path, offset, data, expected):
    prefix = _copy(dataset[1], tmp_path)
    _patch(prefix + ".idx", offset, data)
    message = _refusal(prefix)
    assert message.startswith(f"{prefix}.idx is damaged: ") and expected in message


def test_short_idx_and_document_indices(dataset, tmp_path):
    prefix = _copy(dataset[1], tmp_path)
    count, _, _ = _index(prefix)
    docs = HEADER.size + 12 * count  # document indices: 0, 1, ..., count
    _patch(prefix + ".idx", docs + 8 * 9, struct.pack("<q", 3))
    assert "document 9 starts at sequence 3, before document 8 (sequence 8)" in _refusal(prefix)
    _patch(prefix + ".idx", docs + 8 * 9, struct.pack("<q", 9))
    _patch(prefix + ".idx", docs + 8 * count, struct.pack("<q", count - 1))
    assert f"last document index is {count - 1}, not the sequence count {count}" in _refusal(prefix)
    with open(prefix + ".idx", "r+b") as handle:
        handle.truncate(20)
    assert "20 bytes, shorter than the 34-byte header" in _refusal(prefix)


def _config(model: str, prefix: str, root) -> Config:
    cfg = Config()
    cfg.model.seq_length = 32
    cfg.model.vocab_size = 512
    cfg.data.prefixes = [prefix]
    cfg.data.tokenizer = model
    cfg.data.split = "90,5,5"  # every split gets documents (an empty one loops in megatron-core)
    cfg.data.cache_dir = str(root / "cache")
    return cfg


def test_build_datasets_refuses_a_damaged_prefix(dataset, tmp_path):
    # A garbled (still positive) length: without the check megatron-core builds from it
    # silently. (A negative one makes megatron-core loop forever counting epochs.)
    model, intact = dataset
    prefix = _copy(intact, tmp_path)
    _, lengths, _ = _index(prefix)
    _patch(prefix + ".idx", HEADER.size + 4 * 17, struct.pack("<i", int(lengths[17]) + 300))
    with pytest.raises(MegadytError, match=r"copy\.idx is damaged: sequence 17 has length"):
        build_datasets(_config(model, prefix, tmp_path), load_tokenizer(model), (8, 2, 0))


def test_train_cli_refuses_a_truncated_bin(dataset, tmp_path):
    model, intact = dataset
    prefix = _copy(intact, tmp_path)
    with open(prefix + ".bin", "r+b") as handle:
        handle.truncate(100)
    sets = [
        f"data.prefixes=[{prefix}]",
        f"data.tokenizer={model}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.split=90,5,5",
        f"run.dir={tmp_path / 'run'}",
    ]
    args = ["train", "--config", "configs/tiny/dyt.yaml", *[a for s in sets for a in ("--set", s)]]
    proc = run_cli(*args, env=clean_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("megadyt: error:")]
    assert len(errors) == 1 and f"{prefix}.bin is damaged: 100 bytes" in errors[0]
    assert "Traceback" not in proc.stderr


def test_a_split_without_documents_is_refused(dataset, tmp_path):
    """98,1,1 of 60 documents leaves validation none: megatron-core would loop forever."""
    model, intact = dataset
    cfg = _config(model, intact, tmp_path)
    cfg.data.split = "98,1,1"
    with pytest.raises(MegadytError, match=r"leaves the validation split no document.*60 doc"):
        build_datasets(cfg, load_tokenizer(model), (8, 2, 0))
    cfg.data.split = "90,5,5"
    train, valid, _ = build_datasets(cfg, load_tokenizer(model), (8, 2, 0))
    assert len(train) >= 8 and len(valid) >= 2
