"""A graceful stop: SIGUSR1/SIGTERM (e.g. SLURM's `--signal` before the time limit, or a
requeue) set a flag; at the end of the current step all ranks agree on it, save a checkpoint
and exit cleanly."""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from megadyt.parallel.distributed import device


class StopRequest:
    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test harnesses)
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """Whether any rank received a stop signal (a collective: every rank, every step)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
