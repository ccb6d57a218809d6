"""launch/slurm/pretrain.sbatch, unmodified, under a real SLURM: munged, slurmctld and slurmd on
this machine (launch/slurm/local/cluster.sh), the tiny config on 2 CPU processes (NPROC=2).

One job runs uninterrupted. A second job is stopped three ways on its way to the end, and its
losses must equal the first job's, step by step:
1. `scancel --signal=USR1 --batch` mid-run (what `--signal=B:USR1@N` does before the time
   limit): the trainers save, exit 0, and the job requeues itself;
2. the same USR1 while the requeued job starts up: nothing is launched, and it requeues again;
3. `scontrol requeue` mid-run: SIGTERM; the trainers save, and SLURM requeues the job.
SLURM keeps a requeued job pending for its credential lifetime (`cred_expire`, 120 s); the test
releases it 2 s after the requeue with `scontrol update JobId=J StartTime=now` (at once is too
early: slurmd refuses a credential made in the second its last one was revoked), and the
config keeps SLURM's defaults otherwise. Needs root (the daemons) and slurm-wlm (installed with
apt when missing): without them the test is skipped with the reason, except where
MEGADYT_REQUIRE_SLURM=1 (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CLI_SMALL_RUN, ROOT, clean_env, logged_losses

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = ROOT / "launch/slurm/local/cluster.sh"
SBATCH = ROOT / "launch/slurm/pretrain.sbatch"
STEPS = 60  # long enough that a signal sent at step 3 lands mid-run


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the SLURM daemons need root (CI runs this test as root)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "slurm-wlm is not installed, and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    why = _why_not()
    if why:
        if os.environ.get("MEGADYT_REQUIRE_SLURM") == "1":
            pytest.fail(f"MEGADYT_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    state = tmp_path_factory.mktemp("slurm")
    env = {**clean_env(), "STATE": str(state)}
    for action, timeout in (("install", 600), ("start", 120)):
        proc = subprocess.run(
            [str(CLUSTER), action], env=env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, proc.stderr
    env.update(
        SLURM_CONF=str(state / "slurm.conf"),
        NPROC="2",
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "stop"], env=env, timeout=60)


def _submit(env: dict, run_dir: Path) -> str:
    sets = [*CLI_SMALL_RUN, f"train.steps={STEPS}", "train.save_interval=1000",
            f"run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--time=20", f"--output={run_dir}.out",
         str(SBATCH), "configs/tiny/dyt.yaml", *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _job(env: dict, job: str) -> dict:
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def _wait(condition, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _wait_requeued(env: dict, job: str, restarts: int) -> None:
    """Wait until the job is pending again after its `restarts`-th requeue, then release it."""
    _wait(
        lambda: (j := _job(env, job))["JobState"] == "PENDING" and j["Restarts"] == str(restarts),
        f"job {job} requeued ({restarts})",
    )
    # slurmd refuses a credential made in the same second as the requeue revoked the job's
    # last one ("Job credential revoked", and the job fails): release it 2 s later.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)


def _wait_done(env: dict, job: str) -> dict:
    _wait(lambda: _job(env, job)["JobState"] not in {"PENDING", "RUNNING", "COMPLETING"},
          f"job {job} to end")  # fmt: skip
    return _job(env, job)


def _trained_to(env: dict, job: str, run_dir: Path, steps: int) -> bool:
    """Whether the run has logged `steps` losses; fails at once if the job has ended."""
    state = _job(env, job)["JobState"]
    assert state in {"PENDING", "RUNNING", "CONFIGURING"}, f"job {job} is {state}"
    return _logged_steps(run_dir) >= steps


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.read_text().count('"loss"') if path.is_file() else 0


def test_pretrain_sbatch_stops_requeues_and_resumes_exactly(slurm, tmp_path):
    straight_dir, stopped_dir = tmp_path / "straight", tmp_path / "stopped"
    straight = _submit(slurm, straight_dir)
    stopped = _submit(slurm, stopped_dir)  # starts when the first job ends (--exclusive)

    job = _wait_done(slurm, straight)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0")

    # 1. USR1 to the batch script mid-run: save, exit 0, requeue.
    _wait(lambda: _trained_to(slurm, stopped, stopped_dir, 3), "the second job to train")
    subprocess.run(["scancel", "--signal=USR1", "--batch", stopped], env=slurm, check=True)
    _wait_requeued(slurm, stopped, 1)
    first_stop = (stopped_dir / "checkpoints/latest").read_text().strip()
    # 2. USR1 while the requeued job starts up: nothing is launched; it requeues again.
    out = Path(f"{stopped_dir}.out")
    _wait(lambda: "restart 1," in out.read_text(), "the first restart to start")  # plan runs
    subprocess.run(["scancel", "--signal=USR1", "--batch", stopped], env=slurm, check=True)
    _wait_requeued(slurm, stopped, 2)
    # 3. `scontrol requeue` mid-run: SIGTERM to every process; the trainers save.
    trained = _logged_steps(stopped_dir)
    _wait(lambda: _trained_to(slurm, stopped, stopped_dir, trained + 3), "restart 2 to train")
    subprocess.run(["scontrol", "requeue", stopped], env=slurm, check=True)
    _wait_requeued(slurm, stopped, 3)
    job = _wait_done(slurm, stopped)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "3")

    assert logged_losses(stopped_dir) == logged_losses(straight_dir)
    assert sorted(logged_losses(straight_dir)) == list(range(1, STEPS + 1))
    history = [
        json.loads(line) for line in (stopped_dir / "history.jsonl").read_text().splitlines()
    ]
    ends = [(h["outcome"], h["step"]) for h in history if h["event"] == "end"]
    # `scontrol requeue` sends SIGTERM to every process, and the batch script passes it on
    # through srun as USR1: the trainers name whichever reached them first
    assert [o for o, _ in ends][::2] == ["stopped by SIGUSR1", "completed"]
    assert ends[1][0] in {"stopped by SIGTERM", "stopped by SIGUSR1"}
    assert f"step_{ends[0][1]:07d}" == first_stop and 3 <= ends[0][1] < ends[1][1] < STEPS

    logs = {p.name: p.read_text() for p in (stopped_dir / "logs").glob("slurm-*.log")}
    out = out.read_text()
    restart0 = logs[f"slurm-{stopped}-restart0.log"]
    # one line for the stop, from rank 0, with the reason; no traceback, no failed task
    assert restart0.count("megadyt: SIGUSR1 received: stopped at step") == 1, restart0[-3000:]
    for text in (*logs.values(), out):
        assert "Traceback" not in text and "srun: error" not in text, text[-3000:]
    assert "during start-up; the trainers will not be started" in out
    assert f"slurm-{stopped}-restart1.log" in out  # where the trainers' output went
    restart2 = logs[f"slurm-{stopped}-restart2.log"]
    assert f"received: stopped at step {ends[1][1]} with a checkpoint saved" in restart2
