"""Checking where a command will write, at start-up: one line instead of a traceback after
minutes of loading.

Every command that writes a user-named path (`export`, `prepare-data`, `train-tokenizer`,
`compare`, `eval --output/--run-dir`, `import-hf`, `sweep`, `train`'s run.dir) asks
`check_writable` before it imports torch or reads any weights. Writes create missing
directories on the way, so the check walks up to the nearest directory that exists and asks
whether a file can be created there: a path under an existing *file*, a read-only file system
and a directory without write permission are each refused, naming the path and the reason.

This module imports only `megadyt.errors`, so every layer can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from megadyt.errors import MegadytError


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (a broken symlink counts as existing)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def unwritable_reason(directory: str | os.PathLike) -> str | None:
    """Why a file cannot be created in `directory` (created first where missing), or None."""
    directory = Path(os.path.abspath(directory))
    existing = _nearest_existing(directory)
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if os.access(existing, os.W_OK | os.X_OK):
        return None
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only file system"
    return f"no permission to write in {existing}"


def check_writable(path: str | os.PathLike, option: str, directory: bool = False) -> Path:
    """Refuse `path` (given as `option`, e.g. "--output") in one line when it cannot be
    written. A file (the default) is created or replaced: its directory must be, or be
    creatable as, a writable directory, and `path` must not be a directory. A `directory` is
    created or written into: itself, or its nearest existing ancestor, must be writable.
    Returns `path` as a Path."""
    path = Path(path)
    if not directory and path.is_dir():
        reason = f"{path} is a directory"
    else:
        reason = unwritable_reason(path if directory else path.parent)
    if reason is not None:
        raise MegadytError(f"cannot write {option} {path}: {reason}; choose another {option}")
    return path
