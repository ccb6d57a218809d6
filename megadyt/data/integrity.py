"""Structural check of a megatron-core indexed dataset (PREFIX.idx + PREFIX.bin) before training.

megatron-core trusts its files: a flipped byte in the `.idx` trains silently on garbage (negative
sequence lengths included), and a truncated `.bin` fails deep inside a sample read. So every
prefix is checked when training opens it, and damage is refused with one line naming the file,
the first bad record and the fix.

The `.idx` layout (megatron-core's `_IndexWriter`): magic `MMIDIDX\\0\\0`, version (<Q, 1), token
dtype code (<B), sequence count S (<Q), document count D (<Q), then S int32 sequence lengths,
S int64 byte pointers into the `.bin`, D int64 document indices (sequence numbers, 0 first and
S last) and, for multimodal datasets, S int8 modes. The check is cheap: the `.idx` is memory-
mapped and checked block by block with numpy; of the `.bin` only the size is read.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from megadyt.errors import MegadytError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
# megatron-core's DType codes of the integer types (token ids are never floats)
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}
BLOCK = 1 << 22  # records checked per numpy pass: bounded memory for any dataset size


class _Damage(Exception):
    """One defect of one file (internal: becomes a MegadytError naming the prefix's fix)."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path} is damaged: {detail}")


def check_indexed_dataset(prefix: str) -> type[np.integer]:
    """Raise MegadytError unless PREFIX.idx/.bin are a consistent indexed dataset; return the
    token dtype (so callers need not open the dataset again)."""
    try:
        return _check(prefix)
    except _Damage as exc:
        raise MegadytError(
            f"{exc}; re-create the dataset with `megadyt prepare-data --input SOURCE "
            f"--output-prefix {prefix}`"
        ) from None
    except OSError as exc:
        raise MegadytError(
            f"cannot read dataset {prefix!r}: {exc.strerror} ({exc.filename}); fix data.prefixes"
        ) from None


def _check(prefix: str) -> type[np.integer]:
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    idx_size = os.stat(idx_path).st_size
    dtype, count, docs = _header(idx_path, idx_size)
    base = HEADER.size
    data = np.memmap(idx_path, dtype=np.uint8, mode="r")
    lengths = np.frombuffer(data, np.int32, count, base)
    pointers = np.frombuffer(data, np.int64, count, base + 4 * count)
    documents = np.frombuffer(data, np.int64, docs, base + 12 * count)
    end = _check_sequences(idx_path, lengths, pointers, np.dtype(dtype).itemsize)
    _check_documents(idx_path, documents, count)
    _check_bin(bin_path, pointers, end)
    return dtype


def _header(idx_path: str, size: int) -> tuple[type[np.integer], int, int]:
    """(token dtype, sequence count, document count), after checking them against the size."""
    if size < HEADER.size:
        raise _Damage(idx_path, f"{size} bytes, shorter than the {HEADER.size}-byte header")
    with open(idx_path, "rb") as handle:
        magic, version, code, count, docs = HEADER.unpack(handle.read(HEADER.size))
    if magic != MAGIC:
        raise _Damage(idx_path, f"header magic {magic!r} is not {MAGIC!r}")
    if version != VERSION:
        raise _Damage(idx_path, f"header version {version} is not {VERSION}")
    if code not in DTYPES:
        raise _Damage(idx_path, f"token dtype code {code} is none of {sorted(DTYPES)}")
    plain = HEADER.size + 12 * count + 8 * docs
    if size not in (plain, plain + count):  # without or with the per-sequence modes
        raise _Damage(
            idx_path,
            f"{size} bytes, but its header ({count} sequences, {docs} document indices) "
            f"implies {plain}",
        )
    if docs == 0:
        raise _Damage(idx_path, "no document indices (at least the leading 0 is written)")
    return DTYPES[code], count, docs


def _first(bad: np.ndarray) -> int:
    return int(np.argmax(bad))


def _check_sequences(path: str, lengths, pointers, itemsize: int) -> int:
    """Lengths >= 0, pointers from 0 on, each one length past the one before; returns the byte
    end of the last sequence (where the .bin must end)."""
    count = len(lengths)
    if count == 0:
        return 0
    if pointers[0] != 0:
        raise _Damage(path, f"sequence 0 starts at byte {int(pointers[0])}, not 0")
    for start in range(0, count, BLOCK):
        size = lengths[start : start + BLOCK].astype(np.int64)
        if (size < 0).any():
            i = start + _first(size < 0)
            raise _Damage(path, f"sequence {i} has length {int(lengths[i])}")
        step = np.diff(pointers[start : start + BLOCK + 1])  # bytes to the next sequence
        wrong = step != size[: len(step)] * itemsize
        if wrong.any():
            i = start + _first(wrong)
            raise _Damage(path, _misfit(i, lengths, pointers, itemsize))
    return int(pointers[-1]) + int(lengths[-1]) * itemsize


def _misfit(i: int, lengths, pointers, itemsize: int) -> str:
    """Which record breaks `pointer[i + 1] == pointer[i] + length[i] * itemsize`: a bad
    pointer i+1 also breaks the next equation, by the opposite amount; else length i."""
    step = int(pointers[i + 1]) - int(pointers[i])
    if i + 2 < len(pointers):
        pair = int(pointers[i + 2]) - int(pointers[i])
        if pair == (int(lengths[i]) + int(lengths[i + 1])) * itemsize:
            wanted = int(pointers[i]) + int(lengths[i]) * itemsize
            return f"sequence {i + 1} starts at byte {int(pointers[i + 1])}, not {wanted}"
    return (
        f"sequence {i} has length {int(lengths[i])} but the next sequence starts {step} "
        f"bytes after it, not {int(lengths[i]) * itemsize}"
    )


def _check_documents(path: str, documents, count: int) -> None:
    """Document indices: 0 first, never decreasing, the sequence count last."""
    if documents[0] != 0:
        raise _Damage(path, f"document 0 starts at sequence {int(documents[0])}, not 0")
    for start in range(0, len(documents), BLOCK):
        down = np.diff(documents[start : start + BLOCK + 1]) < 0
        if down.any():
            i = start + _first(down) + 1
            raise _Damage(
                path,
                f"document {i} starts at sequence {int(documents[i])}, before document "
                f"{i - 1} (sequence {int(documents[i - 1])})",
            )
    if documents[-1] != count:
        raise _Damage(
            path,
            f"the last document index is {int(documents[-1])}, not the sequence count {count}",
        )


def _check_bin(bin_path: str, pointers, end: int) -> None:
    """The .bin holds exactly the bytes the .idx describes (only its size is read)."""
    size = os.stat(bin_path).st_size
    if size > end:
        raise _Damage(bin_path, f"{size} bytes, {size - end} more than its .idx describes ({end})")
    if size < end:  # the first sequence that does not fit (ends are the next starts)
        i = int(np.searchsorted(pointers[1:], size, side="right"))
        stop = int(pointers[i + 1]) if i + 1 < len(pointers) else end
        raise _Damage(
            bin_path,
            f"{size} bytes (truncated?): sequence {i} ends at byte {stop}, the last at {end}",
        )


def document_count(prefix: str) -> int:
    """Documents in a checked dataset (what megatron-core splits train/valid/test over)."""
    idx_path = prefix + ".idx"
    _, _, docs = _header(idx_path, os.stat(idx_path).st_size)
    return docs - 1
