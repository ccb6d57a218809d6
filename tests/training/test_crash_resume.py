"""A killed or signalled `megadyt train` loses nothing past its last checkpoint.

Real processes of the CLI on the built-in corpus: SIGKILL at an arbitrary moment after a
checkpoint exists, then the same command again must continue with exactly the losses of an
uninterrupted run. SIGUSR1 (SLURM's warning before the time limit) to torchrun must save and
exit 0 with one line, also when it arrives during start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, clean_env, logged_losses, train_command

pytestmark = pytest.mark.multiprocess


def _quiet() -> dict:
    """subprocess keywords: repository root, clean launcher variables, no output."""
    return {
        "cwd": ROOT,
        "env": clean_env(OMP_NUM_THREADS="1"),
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
    }


def _run(cmd: list[str]) -> None:
    """Run to completion; a hang fails the test after 300 s."""
    subprocess.run(cmd, check=True, timeout=300, **_quiet())


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"training exited early with code {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for training progress"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[int, float]:
    run_dir = tmp_path_factory.mktemp("straight")
    _run(train_command(run_dir, 12, 3))
    return logged_losses(run_dir)


def test_kill_9_then_resume_matches_uninterrupted_run(tmp_path, straight):
    cmd = train_command(tmp_path, 12, 3)
    latest = tmp_path / "checkpoints" / "latest"
    proc = subprocess.Popen(cmd, **_quiet())
    _wait_for(latest.is_file, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = latest.read_text().strip()
    assert killed_at.startswith("step_") and int(killed_at[5:]) < 12

    _run(cmd)
    resumed = logged_losses(tmp_path)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(int(killed_at[5:]) + 1, 13):
        assert resumed[step] == straight[step], (step, resumed[step], straight[step])
    assert latest.read_text().strip() == "step_0000012"


def _torchrun(cmd: list[str]) -> list[str]:
    """The same command under torchrun (megadyt's wrapper, as the launch scripts run it), 2
    ranks; --standalone picks a free rendezvous port."""
    run = [sys.executable, "-m", "megadyt.parallel.torchrun", "--standalone", "--nproc_per_node=2"]
    return [*run, *cmd[1:]]


@pytest.mark.parametrize("when", ["mid-run", "start-up"])
def test_a_stop_under_torchrun_exits_0_with_one_line(tmp_path, when):
    """SIGUSR1 to the torchrun agent (what srun passes on): every worker saves and exits 0,
    so the agent does too, without torchrun's traceback; rank 0 says so in one line. Sent
    before the agent has started its workers, it reaches them too: they stop before
    training."""
    proc = subprocess.Popen(
        _torchrun(train_command(tmp_path, 40, 1000)),
        cwd=ROOT, env=clean_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    if when == "mid-run":
        _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 2, proc)
    else:
        time.sleep(0.5)  # the wrapper's handler is set; torch is still being imported
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out and "SignalException" not in out, out[-3000:]
    latest = tmp_path / "checkpoints" / "latest"
    if when == "mid-run":
        assert out.count("megadyt: SIGUSR1 received: stopped at step") == 1, out[-3000:]
        assert 2 <= int(latest.read_text().strip()[5:]) < 40
    else:
        assert out.count("megadyt: SIGUSR1 received during start-up") == 1, out[-3000:]
        assert not latest.exists() and '"loss"' not in metrics.read_text()


def _worker_of_rank(launcher_pid: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=`rank` (read from its environment)."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def test_a_stop_while_the_trainer_starts_is_not_fatal(tmp_path):
    """`megadyt train` takes SIGUSR1 from its first moments (SIGUSR1's default action would
    kill it while torch is being imported, or the model built): it stops before training."""
    proc = subprocess.Popen(
        train_command(tmp_path, 40, 1000), cwd=ROOT, env=clean_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # the CLI has started; torch is still being imported
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert out.count("megadyt: SIGUSR1 received during start-up") == 1, out[-3000:]
    assert not (tmp_path / "checkpoints" / "latest").exists()


@pytest.mark.slow
def test_kill_9_of_one_rank_during_a_save_then_resume_matches(tmp_path):
    """Two ranks under torchrun; rank 1 is SIGKILLed as soon as the directory of a new
    checkpoint appears (while that save is in progress, when the timing allows). Whatever the
    moment, `latest` must verify, and the rerun must continue with the uninterrupted losses."""
    from megadyt.training.checkpoint import store
    from megadyt.training.run import layout as rundir

    straight_dir, crash_dir = tmp_path / "straight", tmp_path / "crash"
    _run(_torchrun(train_command(straight_dir, 8, 2)))
    straight = logged_losses(straight_dir)

    cmd = _torchrun(train_command(crash_dir, 8, 2))
    proc = subprocess.Popen(cmd, start_new_session=True, **_quiet())
    try:
        ckpts = crash_dir / "checkpoints"
        # the first complete checkpoint, then the directory of the next one
        _wait_for((ckpts / "latest").is_file, proc)
        _wait_for(lambda: (ckpts / rundir.tag_for(4)).is_dir(), proc)
        os.kill(_worker_of_rank(proc.pid, 1), signal.SIGKILL)  # torchrun then ends rank 0
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
            proc.wait()
    assert proc.returncode != 0
    tag = (ckpts / "latest").read_text().strip()
    store.verify_checkpoint(ckpts / tag)  # raises if what `latest` names is incomplete

    _run(cmd)
    resumed = logged_losses(crash_dir)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(int(tag[5:]) + 1, 9):
        assert resumed[step] == straight[step], (step, resumed[step], straight[step])
