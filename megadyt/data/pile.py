"""Reading Pile-format corpora: JSON lines with `text` and `meta.pile_set_name`.

Inputs are files or globs: `.jsonl`/`.json` (JSON lines), the same compressed with zstandard
(`.zst`, as The Pile is distributed) or gzip (`.gz`), `.txt` (one document per file),
`.parquet`/`.arrow` (through `datasets`), or a `datasets` hub name where a hub is reachable.
Records are yielded *raw* (bytes of a JSON line, a dict row, or a text string) with their 1-based
line number, so parsing can happen in worker processes; `parse_record` makes `(text, subset)`.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from megadyt.errors import MegadytError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.zst", ".json.zst", ".zst", ".jsonl.gz", ".json.gz")
DATASETS_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
TEXT_SUFFIXES = (".txt", ".md")

Raw = bytes | dict | str  # a JSON line, a `datasets` row, or a whole plain-text document


@dataclass(frozen=True)
class RawRecord:
    source: str  # the file (or hub name) it came from
    line: int  # 1-based line (JSON lines) or row number
    raw: Raw


class BadRecord(ValueError):
    """A record that is not a JSON object with a string `text` field."""


def expand_inputs(specs: list[str]) -> list[str]:
    """Files for a list of paths/globs (sorted within each glob); hub names pass through."""
    out: list[str] = []
    for spec in specs:
        if any(ch in spec for ch in "*?["):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise MegadytError(f"--input {spec!r} matches no files; check the glob pattern")
            out.extend(matches)
        elif os.path.exists(spec):
            if os.path.isdir(spec):
                raise MegadytError(
                    f"--input {spec!r} is a directory; pass its files or a glob like {spec}/*.jsonl"
                )
            out.append(spec)
        elif "/" in spec.strip("/") and not spec.startswith((".", "/")) and "." not in spec:
            out.append(spec)  # looks like a hub dataset name ("org/name")
        else:
            raise MegadytError(f"--input file {spec!r} not found")
    return out


ZST_BLOCK = 1 << 16  # compressed bytes decompressed at a time (bounds the memory it takes)


def _zst_chunks(path: str) -> Iterator[bytes]:
    """The decompressed bytes of a .zst file, frame after frame. zstandard's stream reader
    ends quietly where a truncated file ends, so its last line looked like a malformed record
    (which --skip-bad-records then dropped, with every document after it): here a frame cut
    off by the end of the file, or corrupt data, is a MegadytError naming the byte offset."""
    import zstandard

    offset = frame_start = 0  # compressed bytes before the current block; the frame's start
    frame = None  # the decompressor of the frame in progress (None: between frames)
    with open(path, "rb") as raw:
        for block in iter(lambda: raw.read(ZST_BLOCK), b""):
            data = block
            while data:
                if frame is None:
                    frame = zstandard.ZstdDecompressor().decompressobj()
                    frame_start = offset + len(block) - len(data)
                try:
                    out = frame.decompress(data)
                except zstandard.ZstdError as exc:
                    raise MegadytError(
                        f"{path} is corrupt: the zstd frame from byte {frame_start:,} fails "
                        f"before byte {offset + len(block):,} ({exc}); the file is damaged: "
                        "copy or download it again"
                    ) from exc
                data = frame.unused_data if frame.eof else b""
                frame = None if frame.eof else frame
                if out:
                    yield out
            offset += len(block)
    if frame is not None:
        raise MegadytError(
            f"{path} is truncated: it ends at byte {offset:,} inside the zstd frame from byte "
            f"{frame_start:,}; the file is incomplete: copy or download it again"
        )


def _zst_lines(path: str) -> Iterator[bytes]:
    """The lines of a .zst file (the last without its newline), whole or not at all."""
    pending: list[bytes] = []  # the start of a line that continues in the next chunk
    for chunk in _zst_chunks(path):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending.append(chunk[start : end + 1])
            yield b"".join(pending)
            pending.clear()
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115


def _kind(path: str) -> str:
    lower = path.lower()
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl"
    for suffix, fmt in DATASETS_SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    if lower.endswith(TEXT_SUFFIXES):
        return "text"
    if os.path.exists(path):
        return "jsonl"  # unknown extension: try JSON lines, errors will say which line
    return "hub"


def iter_raw_records(path: str) -> Iterator[RawRecord]:
    """Yield every record of one input without parsing it (blank lines are not records)."""
    kind = _kind(path)
    if kind == "jsonl":
        number = 0
        try:
            with contextlib.ExitStack() as stack:
                if path.endswith(".zst"):
                    stream = _zst_lines(path)
                else:
                    stream = stack.enter_context(_open_binary(path))
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield RawRecord(path, number, line)
        except (OSError, EOFError) as exc:
            raise MegadytError(f"cannot read {path} after line {number}: {exc}") from exc
    elif kind == "text":
        with open(path, "rb") as stream:
            data = stream.read()
        try:
            yield RawRecord(path, 1, data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            yield RawRecord(path, 1, {"error": f"not UTF-8 text ({exc.reason})"})
    else:
        yield from _iter_datasets(path, kind)


def _iter_datasets(path: str, kind: str) -> Iterator[RawRecord]:
    try:
        import datasets
    except ImportError as exc:
        raise MegadytError(
            f"reading {path} needs the `datasets` package: pip install datasets"
        ) from exc
    try:
        if kind == "hub":
            dataset = datasets.load_dataset(path, split="train", streaming=True)
        else:
            dataset = datasets.load_dataset(kind, data_files=path, split="train", streaming=True)
    except Exception as exc:  # datasets raises many types (FileNotFound, ConnectionError, ...)
        raise MegadytError(
            f"could not load {path!r} with `datasets` ({type(exc).__name__}: {exc}); "
            "pass local Pile-format .jsonl/.jsonl.zst files instead"
        ) from exc
    for number, row in enumerate(dataset, start=1):
        yield RawRecord(path, number, dict(row))


def parse_record(raw: Raw) -> tuple[str, str | None]:
    """(text, pile_set_name) of one raw record; raises BadRecord with the reason."""
    if isinstance(raw, str):
        return raw, None
    if isinstance(raw, bytes):
        try:
            obj = json.loads(raw)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise BadRecord(f"malformed JSON ({exc})") from None
    else:
        obj = raw
    if not isinstance(obj, dict):
        raise BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    if "error" in obj and "text" not in obj:
        raise BadRecord(str(obj["error"]))
    text = obj.get("text")
    if not isinstance(text, str):
        what = "missing" if text is None else f"a {type(text).__name__}, not a string"
        raise BadRecord(f"field 'text' is {what}")
    meta = obj.get("meta")
    subset = meta.get("pile_set_name") if isinstance(meta, dict) else None
    return text, subset if isinstance(subset, str) else None


def iter_texts(paths: list[str]) -> Iterator[str]:
    """Document texts of all inputs, skipping bad records (for tokenizer training)."""
    for path in paths:
        for record in iter_raw_records(path):
            try:
                text, _ = parse_record(record.raw)
            except BadRecord:
                continue
            yield text
