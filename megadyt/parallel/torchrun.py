"""`python -m megadyt.parallel.torchrun ARGS`: torchrun, with a graceful stop and without its
traceback for a user error. The documented way to launch N processes on one node:
`python -m megadyt.parallel.torchrun --nproc_per_node=N -m megadyt train ...`.

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

SIGINT (Ctrl-C) is taken from torchrun too. torchrun starts each worker in a session of its
own, so a terminal's Ctrl-C reaches this agent only; the agent passes each one on. The
workers treat the first as a stop with a save and the second as an abort
(`stop_signals.StopRequest`); after an abort the agent exits 130 without torchrun's report.
A worker that cannot take it (hung in a collective) is killed 10 s after the second Ctrl-C,
or at once at a third. SIGHUP and SIGQUIT keep torchrun's behaviour: they stop the workers
now.

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

import psutil

from megadyt.parallel.stop_signals import INTERRUPT, STOP_ENV, STOP_SIGNALS

INTERRUPTED_EXIT = 128 + INTERRUPT
ABORT_GRACE_S = 10.0  # after the second Ctrl-C, a worker still running is killed
_interrupts = 0  # Ctrl-Cs this agent has received


def _workers() -> list:
    return psutil.Process().children()


def _send(workers: list, signum: int) -> None:
    for worker in workers:
        try:
            worker.send_signal(signum)
        except psutil.NoSuchProcess:
            pass


def _serve_stop_signals() -> None:
    """Take each stop signal (blocked in every thread, so it waits here) and pass it on to the
    workers this agent started (its only child processes), and to any it starts later."""
    while True:
        signum = signal.sigwait(STOP_SIGNALS)
        workers = _workers()
        if signum == signal.SIGTERM and not workers:
            os._exit(128 + signum)  # nothing started, nothing to save
        os.environ[STOP_ENV] = signal.Signals(signum).name
        _send(workers, signum)


def _pass_on_interrupt(signum, frame) -> None:
    """Ctrl-C: the workers decide (save at the first, abort at the second); with none started
    yet there is nothing to save, and the agent ends at once. A worker hung in a collective
    never runs its handler: it is killed `ABORT_GRACE_S` after the second Ctrl-C, or at the
    third."""
    global _interrupts
    _interrupts += 1
    workers = _workers()
    if not workers:
        os._exit(INTERRUPTED_EXIT)
    if _interrupts > 2:
        _send(workers, signal.SIGKILL)
        return
    _send(workers, signum)
    if _interrupts == 2:
        timer = threading.Timer(ABORT_GRACE_S, _send, (workers, signal.SIGKILL))
        timer.daemon = True
        timer.start()


def _without_stop_signals(signals_to_handle: str) -> str:
    names = {s.name for s in (*STOP_SIGNALS, INTERRUPT)}
    kept = [s for s in signals_to_handle.split(",") if s.strip() not in names]
    return ",".join(kept) or "SIGHUP"


def main(argv: list[str] | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # first: every later thread inherits it
    threading.Thread(target=_serve_stop_signals, name="megadyt-stop", daemon=True).start()
    signal.signal(INTERRUPT, _pass_on_interrupt)
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
        if _interrupts > 1:  # aborted by a second Ctrl-C: the workers said so
            return INTERRUPTED_EXIT
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
