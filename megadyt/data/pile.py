"""Reading Pile-format corpora: JSON lines with `text` and `meta.pile_set_name`.

Inputs are files or globs: `.jsonl`/`.json` (JSON lines), the same compressed with zstandard
(`.zst`, as The Pile is distributed) or gzip (`.gz`), `.txt` (one document per file),
`.parquet`/`.arrow` (through `datasets`), or a `datasets` hub name where a hub is reachable.
Records are yielded *raw* (bytes of a JSON line, a dict row, or a text string) with their 1-based
line number, so parsing can happen in worker processes; `parse_record` makes `(text, subset)`.
"""

from __future__ import annotations

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


def _open_binary(path: str) -> io.BufferedIOBase:
    if path.endswith(".zst"):
        import zstandard

        raw = open(path, "rb")  # noqa: SIM115 - closed with the reader
        reader = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)
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
            with _open_binary(path) as stream:
                for number, line in enumerate(stream, start=1):
                    if line.strip():
                        yield RawRecord(path, number, line)
        except (OSError, EOFError) as exc:
            raise MegadytError(f"cannot read {path} after line {number}: {exc}") from exc
        except Exception as exc:  # zstandard.ZstdError: a corrupt or truncated .zst
            if type(exc).__module__.startswith("zstandard"):
                raise MegadytError(
                    f"cannot decompress {path} after line {number}: {exc} (corrupt or truncated?)"
                ) from exc
            raise
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
