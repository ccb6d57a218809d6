"""Write-then-rename helpers: a file under its final name is always complete.

Every output of the data pipeline (tokenizer models, corpora, PREFIX.bin/.idx) is written to a
temporary name in the same directory (`NAME.tmp-PID`) and renamed into place only when it is
complete, so a killed or concurrent build never leaves a half file under the real name.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
from collections.abc import Iterator


def temp_path(final: str) -> str:
    """The temporary name `final` is written under by this process."""
    return f"{final}.tmp-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: str) -> None:
    """Delete `final.tmp-PID` files left by processes that no longer run (e.g. a killed build)."""
    for path in glob.glob(glob.escape(final) + ".tmp-*"):
        suffix = path.rsplit(".tmp-", 1)[-1]
        if suffix.isdigit() and int(suffix) != os.getpid() and not _pid_alive(int(suffix)):
            with contextlib.suppress(OSError):
                os.remove(path)


@contextlib.contextmanager
def atomic_output(final: str) -> Iterator[str]:
    """Yield a temporary path; rename it to `final` if the block succeeds, else delete it."""
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock (flock) on `path`, so concurrent builders take turns."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
