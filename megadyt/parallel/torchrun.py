"""`python -m megadyt.parallel.torchrun ARGS`: torchrun, with a graceful stop and without its
traceback for a user error.

A stop request (SIGUSR1 or SIGTERM: SLURM's `--signal` before the time limit, `scancel`,
preemption) is the trainers' to handle: each saves its part of a checkpoint and exits 0
(`megadyt.training.signals`). torchrun's own handling of a signal is to raise in its agent,
forward the signal, and exit 1 with a 30-line traceback once the workers are gone, so every
graceful stop looked like a crash (and `srun --kill-on-bad-exit` killed the other nodes). So
this agent handles those two signals itself: it passes them to its workers and lets them
finish; torchrun then sees them succeed and exits 0. A stop that arrives before the workers
exist is handed to them through `STOP_ENV`. Other signals (SIGINT, SIGHUP, SIGQUIT) keep
torchrun's behaviour.

torchrun also raises `ChildFailedError` whenever a worker exits non-zero, and prints it with a
traceback and a failure table; no flag turns that off. A megadyt user error has already been
printed as one line (by rank 0) with exit code 2, so when the first worker to fail exited
with 2, this exits 2 quietly. Any other failure keeps torchrun's full report.
"""

from __future__ import annotations

import os
import signal
import sys

import psutil

from megadyt.parallel.stop_signals import STOP_ENV, STOP_SIGNALS


def _pass_to_workers(signum: int, frame) -> None:
    """Give a stop request to every worker this agent started (its child processes), and to
    any it starts later."""
    os.environ[STOP_ENV] = signal.Signals(signum).name
    for child in psutil.Process().children():
        try:
            child.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _without_stop_signals(signals_to_handle: str) -> str:
    names = {s.name for s in STOP_SIGNALS}
    return ",".join(s for s in signals_to_handle.split(",") if s.strip() not in names)


def main(argv: list[str] | None = None) -> int:
    for sig in STOP_SIGNALS:  # first: torch's import takes seconds
        signal.signal(sig, _pass_to_workers)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from megadyt.errors import MegadytError

    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.signals_to_handle = _without_stop_signals(args.signals_to_handle)
    try:
        run(args)
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        if first.exitcode == MegadytError.exit_code:
            return MegadytError.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
