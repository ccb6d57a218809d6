"""launch/slurm/pretrain.sbatch, unmodified, under a real SLURM: munged, slurmctld and two slurmd
(nodes megadyt-1 and megadyt-2 at 127.0.0.2 and 127.0.0.3, launch/slurm/local/cluster.sh) on this
machine, the tiny config on 2 CPU processes.

1. One job runs uninterrupted on one node (NPROC=2): the reference curve. A second job is
   stopped three ways on its way to the end, and its losses must equal the first job's:
   `scancel --signal=USR1 --batch` mid-run (what `--signal=B:USR1@N` does before the time
   limit: the trainers save, exit 0, and the job requeues itself); the same USR1 while the
   requeued job starts up (nothing is launched, it requeues again); `scontrol requeue` mid-run
   (SIGTERM; the trainers save, and SLURM requeues the job).
2. The job ends with its zero-shot table: at TP=2 the trainers write it after the last step,
   equal to a hand-run `megadyt eval --tp 2` of that step; requeued once complete and without
   the table, the job only evaluates (`megadyt eval --final`) and writes the same table.
3. Two nodes, one process each, through the script's c10d rendezvous at the first node's
   address: stopped by USR1 and requeued, then one trainer on the second node is killed with
   SIGKILL. The trainer on the first node does not hang: it fails within the watchdog's time
   with a line naming rank 1, the job fails, and its requeue resumes from the last checkpoint.
   The losses equal the one-node job's at every step.
SLURM keeps a requeued job pending for its credential lifetime (`cred_expire`, 120 s); the
tests release it 2 s after the requeue with `scontrol update JobId=J StartTime=now` (at once is
too early: slurmd refuses a credential made in the second its last one was revoked). Jobs that
may run at once get their own MASTER_PORT (their rendezvous stores share this machine). Needs
root (the daemons) and slurm-wlm (installed with apt when missing): without them the tests are
skipped with the reason, except where MEGADYT_REQUIRE_SLURM=1 (CI).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import CLI_SMALL_RUN, ROOT, clean_env, logged_losses

from megadyt.parallel.launch_env import free_port
from megadyt.training.run.layout import RunDir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = ROOT / "launch/slurm/local/cluster.sh"
SBATCH = ROOT / "launch/slurm/pretrain.sbatch"
STEPS = 100  # long enough that a signal sent at step 3, or a kill at step 10, lands mid-run


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
        PYTHON=sys.executable,
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER), "stop"], env=env, timeout=60)


def _submit(env: dict, run_dir: Path, sets=(), nodes: int = 1, nproc: int = 2) -> str:
    sets = [*CLI_SMALL_RUN, f"train.steps={STEPS}", "train.save_interval=1000",
            f"run.dir={run_dir}", *sets]  # fmt: skip
    # one thread per process whatever the node count: the same arithmetic, the same losses
    env = {**env, "NPROC": str(nproc), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["sbatch", "--parsable", f"--nodes={nodes}", "--time=20", f"--output={run_dir}.out",
         str(SBATCH), "configs/tiny/dyt.yaml", *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def _job(env: dict, job: str) -> dict:
    """The job's fields as `scontrol show job` gives them (asked again when scontrol fails: on an
    overloaded machine it can lose its connection to slurmctld)."""
    for _ in range(5):
        proc = subprocess.run(["scontrol", "-o", "show", "job", job], env=env,
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode == 0:
            return dict(field.split("=", 1) for field in proc.stdout.split() if "=" in field)
        time.sleep(1)
    raise AssertionError(f"scontrol show job {job} failed: {proc.stderr}")


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


class Straight:
    """The uninterrupted one-node job (submitted at once, waited for when first asked)."""

    def __init__(self, env: dict, run_dir: Path) -> None:
        self.env, self.run_dir, self.job = env, run_dir, _submit(env, run_dir)
        self._losses: dict[int, float] | None = None

    def losses(self) -> dict[int, float]:
        if self._losses is None:
            job = _wait_done(self.env, self.job)
            assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("COMPLETED", "0:0", "0")
            self._losses = logged_losses(self.run_dir)
            assert sorted(self._losses) == list(range(1, STEPS + 1))
        return self._losses


@pytest.fixture(scope="module")
def straight(slurm, tmp_path_factory) -> Straight:
    return Straight(slurm, tmp_path_factory.mktemp("straight") / "run")


def test_pretrain_sbatch_stops_requeues_and_resumes_exactly(slurm, straight, tmp_path):
    stopped_dir = tmp_path / "stopped"
    stopped = _submit(slurm, stopped_dir)  # on the other node, beside the straight job

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

    assert logged_losses(stopped_dir) == straight.losses()
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


# -- the final zero-shot table --------------------------------------------------------------------
FINAL_TASKS = "stdlib_nextline,stdlib_heldout_ppl"
TABLE = f"eval/step_0000004-{FINAL_TASKS.replace(',', '+')}.json"


def _scores(path: Path) -> dict:
    """What a results file says about the model (not where or how fast it was made)."""
    payload = json.loads(path.read_text())
    return {k: payload[k] for k in ("step", "limit", "tasks", "average", "errors")}


def test_the_job_ends_with_the_final_table_and_a_complete_run_only_evaluates(slurm, tmp_path):
    run_dir = tmp_path / "tp2"
    tp2 = ["train.steps=4", "parallel.tp=2", "parallel.sp=true", "train.final_zero_shot_limit=6",
           f"train.final_zero_shot_tasks=[{FINAL_TASKS}]"]  # fmt: skip
    job = _submit(slurm, run_dir, tp2)
    done = _wait_done(slurm, job)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0")
    table = run_dir / TABLE
    by_trainers = _scores(table)
    assert by_trainers["step"] == 4 and set(by_trainers["tasks"]) == set(FINAL_TASKS.split(","))

    # Requeued once complete, with the table gone: the job only evaluates (beside it, the same
    # evaluation by hand: `megadyt eval --tp 2` under torchrun)
    table.unlink()
    subprocess.run(["scontrol", "requeue", job], env=slurm, check=True)
    by_hand = tmp_path / "by-hand.json"
    hand = subprocess.Popen(
        [sys.executable, "-m", "megadyt.parallel.torchrun", "--standalone", "--nproc_per_node=2",
         "-m", "megadyt", "eval", "--tp", "2", "--checkpoint", str(run_dir), "--tasks",
         FINAL_TASKS, "--limit", "6", "--output", str(by_hand)],
        cwd=ROOT, env={**clean_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_requeued(slurm, job, 1)
    done = _wait_done(slurm, job)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0")
    output, _ = hand.communicate(timeout=300)
    assert hand.returncode == 0, output[-3000:]

    assert _scores(by_hand) == by_trainers  # the trainers' table is `megadyt eval --tp 2`'s
    assert _scores(table) == by_trainers  # and so is the requeued job's
    assert json.loads(table.read_text())["tp"] == 2
    starts = [h for h in RunDir(run_dir).read_history() if h["event"] == "start"]
    assert len(starts) == 1  # the requeued job trained nothing
    out = Path(f"{run_dir}.out").read_text()
    assert "the run is complete: nothing to train" in out
    assert f"evaluating its final table at TP 2 on megadyt-1: {table}" in out


# -- two nodes ------------------------------------------------------------------------------------
def _trainer_pid(run_dir: Path, rank: int) -> int:
    """The trainer process of global rank `rank` of the run in `run_dir` (torchrun's worker)."""
    for proc in psutil.process_iter():
        try:
            env, cmdline = proc.environ(), " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue
        if f"run.dir={run_dir}" in cmdline and "TORCHELASTIC_RUN_ID" in env:
            if env.get("RANK") == str(rank):
                return proc.pid
    raise AssertionError(f"no trainer of rank {rank} runs for {run_dir}")


def test_two_nodes_give_the_one_node_curve_through_a_stop_and_a_killed_rank(
    slurm, straight, tmp_path
):
    run_dir = tmp_path / "two-nodes"
    sets = ["train.save_interval=10", "parallel.timeout_minutes=0.5"]
    job = _submit(slurm, run_dir, sets, nodes=2, nproc=1)
    # 1. USR1 mid-run: save, requeue, resume
    _wait(lambda: _trained_to(slurm, job, run_dir, 3), "the two-node job to train")
    assert _job(slurm, job)["NodeList"] == "megadyt-[1-2]"
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    _wait_requeued(slurm, job, 1)
    # 2. SIGKILL the trainer of rank 1 (on megadyt-2) once a checkpoint is past the stop
    run = RunDir(run_dir)
    first_stop = run.latest_step()
    _wait(lambda: _trained_to(slurm, job, run_dir, 0) and run.latest_step() > first_stop,
          "a checkpoint of the resumed job")  # fmt: skip
    os.kill(_trainer_pid(run_dir, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    done = _wait_done(slurm, job)
    assert (done["JobState"], done["Restarts"]) == ("FAILED", "1")
    assert time.monotonic() - killed_at < 60  # nothing hung: well within KillWait + the check
    last_checkpoint = run.latest_step()
    log = (run_dir / "logs" / f"slurm-{job}-restart1.log").read_text()
    (line,) = [x for x in log.splitlines() if x.startswith("megadyt: error: rank 0: ")]
    assert "rank 1 did not answer: it hangs or died" in line, line
    # 3. the same sbatch line again resumes from the last checkpoint and completes (a new job:
    # requeueing the failed one races with SLURM's late clean-up of its old step here)
    done = _wait_done(slurm, _submit(slurm, run_dir, sets, nodes=2, nproc=1))
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0")
    starts = [h["resumed_step"] for h in run.read_history() if h["event"] == "start"]
    assert starts == [None, first_stop, last_checkpoint] and 0 < first_stop < last_checkpoint
    assert all(h["world_size"] == 2 for h in run.read_history() if h["event"] == "start")
    assert logged_losses(run_dir) == straight.losses()
