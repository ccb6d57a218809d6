"""Write-then-rename: a file (or directory) under its final name is always complete.

Every output that another process or a later run may read (tokenizer models, corpora,
PREFIX.bin/.idx, checkpoint manifests, `latest`, exported weights, reports) is written under a
temporary name in the same directory, `NAME.tmp-PID`, and moved into place with one
`os.replace` only when it is complete. A killed or concurrent writer therefore never leaves a
half file under the real name; readers see the old content or the new one.

This module imports nothing from megadyt, so every layer (data, config, training, CLI) can use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
from collections.abc import Iterator

__all__ = [
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_lock",
    "new_file_mode",
    "pid_alive",
    "remove_stale_temps",
    "temp_path",
]


def temp_path(final: str | os.PathLike) -> str:
    """The temporary name `final` is written under by this process (`final.tmp-PID`)."""
    return f"{os.fspath(final)}.tmp-{os.getpid()}"


def new_file_mode() -> int:
    """The mode `open()` gives a new file here: 0o666 less the process umask. Read from
    /proc, so the umask is never changed (not even for a moment, which would race other
    threads); elsewhere it is set and restored."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_stale_temps(final: str | os.PathLike) -> None:
    """Delete `final.tmp-PID` left by processes that no longer run (e.g. a killed build)."""
    final = os.fspath(final)
    for path in glob.glob(glob.escape(final) + ".tmp-*"):
        suffix = path.rsplit(".tmp-", 1)[-1]
        if suffix.isdigit() and int(suffix) != os.getpid() and not pid_alive(int(suffix)):
            with contextlib.suppress(OSError):
                _remove(path)


@contextlib.contextmanager
def atomic_output(final: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to `final`; `os.replace` it onto `final` if the block
    succeeds, delete it otherwise. The block may write a file there (`torch.save(obj, tmp)`,
    `open(tmp, "w")`) or create a directory (replacing `final` needs it absent or empty).
    Parent directories are created."""
    final = os.fspath(final)
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically, fsynced before the rename (survives a power cut)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see `atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`, so concurrent builders take turns."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
