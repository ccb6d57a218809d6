"""A graceful stop: which signals ask a run to stop, how a launcher passes one on, and the
flag the trainer polls (`StopRequest`). Torch-free at import: the launcher wrapper and `megadyt
train` install their handlers before importing torch (torch is imported only in `agreed`).

SIGUSR1 is SLURM's `--signal` before the time limit (and at preemption with
`PreemptParameters=send_user_signal`); SIGTERM is `scancel`, `scontrol requeue` and plain
preemption. Either one sets the flag; at the end of the current step all ranks agree on it,
save a checkpoint and exit 0.

SIGINT (Ctrl-C) asks for the same stop the first time, and rank 0 says so at once in one line
(`CTRL_C_LINE`); a second Ctrl-C aborts without saving (KeyboardInterrupt, exit 130). Under
`megadyt.parallel.torchrun` the workers run in sessions of their own, so the terminal's
Ctrl-C reaches the agent alone, which passes each one on.

`megadyt train` enters a `StopRequest` first thing, before torch is imported: SIGUSR1's default
action is to terminate, so a signal arriving while the model and data are built would kill a
rank without a save. Under `megadyt.parallel.torchrun` the stop signals start blocked (the
launcher's mask is inherited), so even one sent before that moment waits until the handler is
installed and the signals are unblocked.
"""

from __future__ import annotations

import os
import signal

from megadyt.parallel.launch_env import launch_rank

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
INTERRUPT = signal.SIGINT  # Ctrl-C: a stop the first time, an abort the second
# Set by `megadyt.parallel.torchrun` when a stop arrived before it started its workers.
STOP_ENV = "MEGADYT_STOP_SIGNAL"
CTRL_C_LINE = (
    "megadyt: Ctrl-C: saving a checkpoint at the end of this step; press Ctrl-C again to "
    "abort without saving"
)


def ignore_stop_signals() -> None:
    """After a run has ended: a late stop request has nothing left to stop, and SIGUSR1's
    default action would turn a finished run's exit into a failure."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def default_stop_actions() -> None:
    """For a command that takes no stop requests (all but `megadyt train`): under the torchrun
    wrapper the stop signals arrive blocked; unblocked, SIGTERM ends the process, as torchrun
    expects when it stops the other workers after one failed (else a second rank outlived
    its grace period and printed the error again)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def inherited_stop() -> int | None:
    """The stop signal a launcher received before this process existed, if any."""
    name = os.environ.get(STOP_ENV)
    return int(signal.Signals[name]) if name in {s.name for s in STOP_SIGNALS} else None


class StopRequest:
    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.received: int | None = inherited_stop()
        self.interrupted = False  # a first Ctrl-C came: the next one aborts
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        for sig in (*self.SIGNALS, INTERRUPT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test harnesses)
                pass
        if self._previous:  # a stop held back by the launcher's blocked mask arrives now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (*self.SIGNALS, INTERRUPT))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum != INTERRUPT:
            self.received = signum
            return
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self.received = self.received or signum
        if launch_rank() == 0:  # os.write: print() may be mid-write to the same stream
            os.write(2, f"\n{CTRL_C_LINE}\n".encode())

    def agreed(self) -> str | None:
        """The stop signal's name when any rank received one, else None: a collective, so every
        rank calls it at the same points. Different signals on different ranks: the highest
        number wins (SIGTERM, 15, over SIGUSR1, 10, over SIGINT, 2)."""
        from megadyt.parallel.distributed import max_over_ranks

        number = int(max_over_ranks(self.received or 0))
        return signal.Signals(number).name if number else None
