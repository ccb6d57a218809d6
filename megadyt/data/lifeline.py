"""Worker processes that end with their parent: at once and quietly, never as orphans.

A multiprocessing pool worker whose parent is killed (`kill -9`, the OOM killer) otherwise goes
on tokenizing its queued chunks for nobody, then dies on the broken result pipe with a
`BrokenPipeError` traceback per worker. `exit_with_parent(parent_pid)`, called first in a
worker's initializer, arranges instead:

- Linux: the kernel sends the worker SIGTERM when its parent dies (`prctl(PR_SET_PDEATHSIG)`);
  elsewhere, or if that fails, a daemon thread polls `os.getppid()` and exits the worker;
- SIGTERM ends the worker at once with no traceback (the default action, restored explicitly),
  and so does writing a result to a dead parent (SIGPIPE's default action instead of
  `BrokenPipeError`);
- SIGINT is ignored: Ctrl-C reaches the whole process group, and the parent handles it by
  terminating the pool, so the workers need not print a `KeyboardInterrupt` each.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 0.2  # the fallback's delay between parent checks


def exit_with_parent(parent: int) -> None:
    """Make this (worker) process exit quietly as soon as process `parent` is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if not _death_signal(signal.SIGTERM):
        threading.Thread(target=_watch, args=(parent,), name="parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _death_signal(signum: int) -> bool:
    """Ask Linux to send `signum` when the parent dies; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    """Fallback: a parent's death re-parents its children, so a changed ppid means exit."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)
