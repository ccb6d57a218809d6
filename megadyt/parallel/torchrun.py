"""`python -m megadyt.parallel.torchrun ARGS`: torchrun, with a graceful stop and without its
traceback for a user error.

A stop request (SIGUSR1 or SIGTERM: SLURM's `--signal` before the time limit, `scancel`,
preemption) is the trainers' to handle: each saves its part of a checkpoint and exits 0
(`megadyt.parallel.stop_signals`). torchrun's own handling of a signal is to raise in its agent,
forward the signal, and exit 1 with a 30-line traceback once the workers are gone, so every
graceful stop looked like a crash (and `srun --kill-on-bad-exit` killed the other nodes). So
this agent takes those two signals itself and torchrun never sees them:
- they are blocked first thing, and a thread takes them with `sigwait`. The workers inherit
  the blocked mask, so a stop that reaches a worker before its handler exists waits for it
  (`StopRequest` unblocks), instead of killing it with SIGUSR1's default action;
- each one is passed on to the workers, which save and exit 0; torchrun sees them succeed
  and exits 0. One that arrives before the workers exist reaches them through `STOP_ENV`;
  a SIGTERM then, with nothing started and nothing to save, ends the agent at once.
SIGINT (Ctrl-C), SIGHUP and SIGQUIT keep torchrun's behaviour: they stop the workers now.

torchrun also raises `ChildFailedError` whenever a worker exits non-zero, and prints it with a
traceback and a failure table; no flag turns that off. A megadyt user error has already been
printed as one line (by rank 0) with exit code 2, so when the first worker to fail exited
with 2, this exits 2 quietly. Any other failure keeps torchrun's full report.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from megadyt.parallel.stop_signals import STOP_ENV, STOP_SIGNALS


def _serve_stop_signals() -> None:
    """Take each stop signal (blocked in every thread, so it waits here) and pass it on to the
    workers this agent started (its only child processes), and to any it starts later."""
    import psutil

    while True:
        signum = signal.sigwait(STOP_SIGNALS)
        workers = psutil.Process().children()
        if signum == signal.SIGTERM and not workers:
            os._exit(128 + signum)  # nothing started, nothing to save
        os.environ[STOP_ENV] = signal.Signals(signum).name
        for worker in workers:
            try:
                worker.send_signal(signum)
            except psutil.NoSuchProcess:
                pass


def _without_stop_signals(signals_to_handle: str) -> str:
    names = {s.name for s in STOP_SIGNALS}
    kept = [s for s in signals_to_handle.split(",") if s.strip() not in names]
    return ",".join(kept) or "SIGINT"


def main(argv: list[str] | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # first: every later thread inherits it
    threading.Thread(target=_serve_stop_signals, name="megadyt-stop", daemon=True).start()
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
