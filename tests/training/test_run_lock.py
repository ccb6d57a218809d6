"""One writer per run (megadyt.training.run.lock): a second `megadyt train` on a running run is
refused naming the holder, stale locks are taken over, and the lease guards where file locks
do not reach."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ROOT, clean_env, metrics_records, run_cli, train_command

from megadyt.errors import MegadytError
from megadyt.training.run.layout import RunDir
from megadyt.training.run.lock import RunLock


def _record(path, **fields) -> None:
    """A lock record left behind by another process (no flock held on it)."""
    base = {"state": "held", "host": socket.gethostname(), "pid": os.getpid()}
    path.write_text(json.dumps({**base, "heartbeat": time.time(), **fields}))


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_held_lock_refuses_a_second_holder_by_name(tmp_path):
    path = tmp_path / "lock"
    with RunLock(path):
        with pytest.raises(MegadytError) as refused:
            RunLock(path).acquire()
        message = str(refused.value)
        assert "in use by another megadyt train" in message
        assert f"PID {os.getpid()}" in message and socket.gethostname() in message
        assert json.loads(path.read_text())["state"] == "held"
    assert json.loads(path.read_text())["state"] == "released"
    again = RunLock(path)
    again.acquire()
    assert again.warning is None  # a released lock is simply taken
    again.release()


def test_a_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path):
    path = tmp_path / "lock"
    _record(path, pid=_dead_pid())
    lock = RunLock(path)
    lock.acquire()
    assert "its process is gone" in lock.warning
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def test_a_live_lease_on_another_host_holds_until_it_expires(tmp_path):
    path = tmp_path / "lock"
    _record(path, host="node-17", pid=4242, job_id="991")
    with pytest.raises(MegadytError, match=r"node-17 PID 4242, SLURM job 991.*delete"):
        RunLock(path, lease_seconds=300).acquire()
    _record(path, host="node-17", pid=4242, heartbeat=time.time() - 301)
    lock = RunLock(path, lease_seconds=300)
    lock.acquire()
    assert "lease expired" in lock.warning
    lock.release()


def test_a_requeued_job_takes_over_its_own_lease(tmp_path, monkeypatch):
    path = tmp_path / "lock"
    _record(path, host="node-17", pid=4242, job_id="991")
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    lock = RunLock(path)
    lock.acquire()
    assert "requeued" in lock.warning
    lock.release()


def test_the_heartbeat_renews_the_lease(tmp_path):
    path = tmp_path / "lock"
    with RunLock(path, heartbeat_seconds=0.05):
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(path.read_text())["heartbeat"] > first


def test_without_file_locks_the_lease_still_refuses_a_live_holder(tmp_path, monkeypatch):
    """A file system without locks (Lustre mounted without -o flock) answers flock with
    ENOSYS; the record and its live PID must still keep a second writer out."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = tmp_path / "lock"
    with RunLock(path):
        assert json.loads(path.read_text())["flock"] is False
        with pytest.raises(MegadytError, match="in use by another megadyt train"):
            RunLock(path).acquire()


def _wait_for_steps(run_dir, proc, steps: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the first run ended before the second one started"
        metrics = RunDir(run_dir).metrics
        if (
            metrics.is_file()
            and sum('"step"' in x for x in metrics.read_text().splitlines()) >= steps
        ):
            return
        time.sleep(0.5)
    raise AssertionError("the first run did not log its first steps in time")


@pytest.mark.slow
def test_a_double_submit_is_refused_and_the_first_run_finishes_cleanly(tmp_path):
    """The second start gets one `megadyt: error:` line naming the holder, exit 2, no
    traceback; the first run's curve, events and record stay its own."""
    run_dir = tmp_path / "run"
    first_argv = train_command(run_dir, steps=5000, save_interval=5000)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(first_argv, cwd=ROOT, stdout=log, stderr=log, env=clean_env())
        try:
            _wait_for_steps(run_dir, first, steps=2)
            config_before = RunDir(run_dir).config.read_bytes()
            second = subprocess.run(
                [*first_argv, "--set", "train.lr=3e-3"],  # a resubmit with another setting
                cwd=ROOT, capture_output=True, text=True, timeout=180, env=clean_env(),
            )  # fmt: skip
            assert first.poll() is None
            first.send_signal(signal.SIGUSR1)  # the first run saves and stops
            assert first.wait(timeout=180) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            first.kill()
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [x for x in second.stderr.splitlines() if x.startswith("megadyt: error:")]
    assert len(errors) == 1, second.stderr
    assert f"PID {first.pid}" in errors[0] and "in use by another megadyt train" in errors[0]
    assert "Traceback" not in second.stderr
    run = RunDir(run_dir)
    assert run.config.read_bytes() == config_before
    steps = [r["step"] for r in metrics_records(run_dir) if "loss" in r]
    assert len(steps) >= 2 and steps == list(range(1, len(steps) + 1))  # each step once
    assert len(list(run.tensorboard.rglob("events.out.tfevents.*"))) == 1
    assert [(h["event"], h.get("outcome")) for h in run.read_history()] == [
        ("start", None),
        ("end", "stopped by SIGUSR1"),
    ]
    assert json.loads(run.lock_file.read_text())["state"] == "released"


@pytest.mark.parametrize("launcher", ["torch.distributed.run", "megadyt.parallel.torchrun"])
def test_a_user_error_under_torchrun_is_one_line(launcher):
    """Every rank meets the same error; only rank 0 prints it. Plain torchrun then adds its
    ChildFailedError report; megadyt's wrapper exits 2 without it."""
    proc = subprocess.run(
        [sys.executable, "-m", launcher, "--standalone", "--nproc_per_node=2"]
        + ["-m", "megadyt", "train", "--config", "configs/tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=clean_env(OMP_NUM_THREADS="1"),
    )  # fmt: skip
    errors = [x for x in proc.stderr.splitlines() if "megadyt: error:" in x]
    assert len(errors) == 1 and "configs/tiny' is a directory" in errors[0], proc.stderr
    if launcher == "megadyt.parallel.torchrun":
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr


def test_an_error_of_another_rank_alone_is_still_printed():
    """A rank other than 0 that is still alive after the grace period (its launcher did not stop
    it, so rank 0 did not fail) prints its own error, naming itself."""
    env = clean_env(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
    proc = run_cli("train", "--config", "configs/tiny", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("megadyt: error: rank 1: config 'configs/tiny' is a directory")
