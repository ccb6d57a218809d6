"""Which signals ask a run to stop gracefully, and how a launcher passes one on (torch-free:
the launcher wrapper and `megadyt train` install their handlers before importing torch).

SIGUSR1 is SLURM's `--signal` before the time limit (and at preemption with
`PreemptParameters=send_user_signal`); SIGTERM is `scancel`, `scontrol requeue` and plain
preemption. Either one makes every trainer save a checkpoint at the end of its step and exit 0
(`megadyt.training.signals`).
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
# Set by `megadyt.parallel.torchrun` when a stop arrived before it started its workers.
STOP_ENV = "MEGADYT_STOP_SIGNAL"


def ignore_stop_signals() -> None:
    """After a run has ended: a late stop request has nothing left to stop, and SIGUSR1's
    default action would turn a finished run's exit into a failure."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def inherited_stop() -> int | None:
    """The stop signal a launcher received before this process existed, if any."""
    name = os.environ.get(STOP_ENV)
    return int(signal.Signals[name]) if name in {s.name for s in STOP_SIGNALS} else None
