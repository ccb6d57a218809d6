"""Stop requests before the handler exists: a signal held back by the launcher's blocked mask
is delivered when `StopRequest` starts, and one the launcher got before it started the workers
arrives through the environment."""

from __future__ import annotations

import signal
import threading

import pytest

from megadyt.parallel.stop_signals import CTRL_C_LINE, STOP_ENV, StopRequest, inherited_stop
from megadyt.parallel.torchrun import _without_stop_signals


def test_a_signal_pending_under_the_blocked_mask_arrives_on_entry():
    before = signal.getsignal(signal.SIGUSR1)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})  # what the launcher hands down
    # to this thread (a process-directed signal could go to one of pytest's other threads,
    # where it is not blocked): pending, no handler has run
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    try:
        with StopRequest() as stop:
            assert stop.received == signal.SIGUSR1
            assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_stop_the_launcher_received_first_comes_through_the_environment(monkeypatch):
    monkeypatch.delenv(STOP_ENV, raising=False)
    assert inherited_stop() is None and StopRequest().received is None
    monkeypatch.setenv(STOP_ENV, "SIGTERM")
    assert StopRequest().received == signal.SIGTERM
    monkeypatch.setenv(STOP_ENV, "SIGKILL")  # not a stop request: ignored
    assert inherited_stop() is None


def test_torchrun_keeps_its_own_handling_of_the_other_signals():
    assert _without_stop_signals("SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1") == "SIGHUP,SIGQUIT"
    assert _without_stop_signals("SIGUSR1,SIGINT") == "SIGHUP"


def test_a_first_ctrl_c_asks_for_a_stop_and_a_second_aborts(capfd, monkeypatch):
    """The real handler and real signals (raised in this thread): the first SIGINT sets the
    stop and says so on stderr, the second raises KeyboardInterrupt at once; on exit
    Python's own Ctrl-C handling is back."""
    monkeypatch.delenv("RANK", raising=False)  # rank 0 of a single process prints the line
    monkeypatch.delenv(STOP_ENV, raising=False)
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.received == signal.SIGINT
        assert capfd.readouterr().err == f"\n{CTRL_C_LINE}\n"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert capfd.readouterr().err == ""  # said once
