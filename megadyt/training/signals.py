"""A graceful stop: SIGUSR1/SIGTERM (`megadyt.parallel.stop_signals`) set a flag; at the end of
the current step all ranks agree on it, save a checkpoint and exit 0.

`megadyt train` enters a `StopRequest` first thing, before torch is imported: SIGUSR1's default
action is to terminate, so a signal that arrived while the model and data were being built
used to kill a rank without a save. Under `megadyt.parallel.torchrun` the stop signals start
blocked (the launcher's mask is inherited), so even one sent before that moment waits until
the handler is installed and the signals are unblocked. This module imports torch only in
`agreed`.
"""

from __future__ import annotations

import signal

from megadyt.parallel.stop_signals import STOP_SIGNALS, inherited_stop


class StopRequest:
    SIGNALS = STOP_SIGNALS

    def __init__(self) -> None:
        self.received: int | None = inherited_stop()
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test harnesses)
                pass
        if self._previous:  # a stop held back by the launcher's blocked mask arrives now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> str | None:
        """The stop signal's name when any rank received one, else None: a collective, so every
        rank calls it at the same points. Different signals on different ranks: the highest
        number wins (SIGTERM, 15, over SIGUSR1, 10)."""
        import torch
        import torch.distributed as dist

        from megadyt.parallel.distributed import device

        flag = torch.tensor([float(self.received or 0)], device=device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        number = int(flag.item())
        return signal.Signals(number).name if number else None
