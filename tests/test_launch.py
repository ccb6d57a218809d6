"""launch/: scripts parse and are shellcheck-clean; the sbatch script's srun/torchrun command for
a 2-node job, its process count, stop forwarding and requeue (fake srun/scontrol on PATH; the
real SLURM is tests/test_slurm_real.py); a real 2-process CPU run through launch/torchrun.sh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT

from megadyt.parallel.distributed import LaunchEnv
from megadyt.training.run.layout import RunDir

SCRIPTS = sorted(
    p for p in (ROOT / "launch").rglob("*") if p.suffix in (".sh", ".sbatch") and p.is_file()
)
SBATCH = ROOT / "launch/slurm/pretrain.sbatch"
VENV_BIN = str(Path(sys.executable).parent)

FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
if [[ "${FAKE_SRUN_WAIT:-0}" == 1 ]]; then
    trap 'echo USR1 > "$FAKE_LOG/srun.signal"; exit 0' USR1
    trap 'echo TERM > "$FAKE_LOG/srun.signal"; exit 0' TERM
    while true; do sleep 0.1; done
fi
"""
FAKE_SQUEUE = """#!/usr/bin/env bash
echo "${FAKE_TIME_LIMIT:-UNLIMITED}"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG/scontrol.calls"
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-node-07\\ngpu-node-08\\n'; fi
"""


def test_there_are_scripts():
    names = {p.relative_to(ROOT).as_posix() for p in SCRIPTS}
    assert {"launch/torchrun.sh", "launch/slurm/pretrain.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: apt-get install -y shellcheck")
    proc = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _fake_slurm(tmp_path: Path, extra_env: dict | None = None) -> dict:
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir(exist_ok=True)
    log.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("squeue", FAKE_SQUEUE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(
        PATH=f"{bin_dir}:{VENV_BIN}:{env['PATH']}",
        FAKE_LOG=str(log),
        SLURM_JOB_ID="4242",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="gpu-node-[07-08]",
        SLURM_GPUS_ON_NODE="4",
        SLURM_RESTART_COUNT="1",
        SLURM_SUBMIT_DIR=str(ROOT),
    )
    env.update(extra_env or {})
    return env


def _sbatch_args(tmp_path: Path) -> list[str]:
    return ["configs/tiny/dyt.yaml", "--set", "train.micro_batch_size=1",
            "--set", f"run.dir={tmp_path}/run"]  # fmt: skip


def _run_sbatch(tmp_path: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SBATCH), *_sbatch_args(tmp_path)],
        cwd=ROOT, env=_fake_slurm(tmp_path, extra_env), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _torchrun_args(tmp_path: Path) -> list[str]:
    """What the fake srun was asked to run, from the launcher wrapper's arguments on."""
    args = (tmp_path / "log/srun.args").read_text().splitlines()
    return args[args.index("megadyt.parallel.torchrun") + 1 :]


def test_sbatch_builds_the_two_node_torchrun_command(tmp_path):
    proc = _run_sbatch(tmp_path, {"TRAIN_ARGS": "--allow-config-change"})
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "log/srun.args").read_text().splitlines()
    head = args[: args.index("-m")]
    assert "--nodes=2" in head and "--ntasks-per-node=1" in head
    # torchrun through megadyt's wrapper, which owns SIGUSR1/SIGTERM (graceful stop, exit 0)
    assert args[args.index("-m") + 1] == "megadyt.parallel.torchrun"
    torchrun = _torchrun_args(tmp_path)
    for expected in (
        "--nnodes=2",
        "--nproc_per_node=4",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=gpu-node-07:29500",
        "--rdzv_id=4242",
    ):
        assert expected in torchrun, (expected, torchrun)
    assert not any(a.startswith("--signals_to_handle") for a in torchrun)
    train = ["-m", "megadyt", "train", "--config", *_sbatch_args(tmp_path)]
    train.append("--allow-config-change")  # TRAIN_ARGS: for `megadyt train`, not `plan`
    assert torchrun[torchrun.index("-m") :] == train
    calls = (tmp_path / "log/scontrol.calls").read_text()
    assert "show hostnames gpu-node-[07-08]" in calls and "requeue" not in calls
    # The plan check (2 nodes x 4 = 8 ranks, and the stop against the signal's lead) ran and
    # went to the run dir's log.
    log = (tmp_path / "run/logs/slurm-4242-restart1.log").read_text()
    assert "TP 1 x DP 8" in log and "(gpu, 80 GB each)" in log
    assert "grace 10.0 min: fits" in log


def test_sbatch_process_count_comes_from_nproc_and_a_cpu_node_needs_it(tmp_path):
    cpu_node = {"SLURM_GPUS_ON_NODE": ""}
    proc = _run_sbatch(tmp_path, cpu_node)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "NPROC=N" in proc.stderr and "--gpus-per-node=N" in proc.stderr
    assert not (tmp_path / "log/srun.args").exists()

    proc = _run_sbatch(tmp_path, {**cpu_node, "NPROC": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "--nproc_per_node=1" in _torchrun_args(tmp_path)
    log = (tmp_path / "run/logs/slurm-4242-restart1.log").read_text()
    assert "2 node(s) x 1 = 2 ranks (cpu," in log


def test_sbatch_refuses_a_time_limit_inside_the_stop_lead(tmp_path):
    """USR1 arrives STOP_GRACE_S (600 s) before the end: with --time=10 it would arrive at
    every start, and the job would requeue forever without training."""
    proc = _run_sbatch(tmp_path, {"FAKE_TIME_LIMIT": "10:00"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "time limit (10:00)" in proc.stderr and "raise --time" in proc.stderr
    assert not (tmp_path / "log/srun.args").exists()


def _start_sbatch(tmp_path: Path, extra_env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(SBATCH), *_sbatch_args(tmp_path)],
        cwd=ROOT, env=_fake_slurm(tmp_path, extra_env), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_srun(tmp_path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while not (tmp_path / "log/srun.args").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "srun never started"
        time.sleep(0.2)
    time.sleep(0.5)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM], ids=["usr1", "term"])
def test_sbatch_passes_a_stop_to_srun_as_usr1(tmp_path, sig):
    """srun answers SIGTERM by killing the step, so every stop reaches it as USR1; only a
    USR1 (the time limit) requeues: a SIGTERM came from SLURM, which decides that itself."""
    proc = _start_sbatch(tmp_path, {"FAKE_SRUN_WAIT": "1"})
    _wait_for_srun(tmp_path, proc)
    proc.send_signal(sig)  # USR1: what `#SBATCH --signal=B:USR1@600` does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "log/srun.signal").read_text().strip() == "USR1"
    requeued = "requeue 4242" in (tmp_path / "log/scontrol.calls").read_text()
    assert requeued == (sig == signal.SIGUSR1), err
    assert "Terminated" not in err and "Traceback" not in err


def test_sbatch_on_a_complete_run_only_evaluates_and_a_stop_ends_the_evaluation(tmp_path):
    """A run trained to train.steps without its final table: no training step, `megadyt eval
    --final` at the training TP on one node; a USR1 meanwhile ends that step (TERM to srun:
    an evaluation has nothing to save) and requeues the job to evaluate again."""
    RunDir(tmp_path / "run").checkpoints.mkdir(parents=True)
    RunDir(tmp_path / "run").publish_latest("step_0000300")  # configs/tiny: train.steps 300
    sets = ["--set", "train.final_zero_shot_tasks=[stdlib_nextline]", "--set", "parallel.tp=2"]
    proc = subprocess.Popen(
        ["bash", str(SBATCH), *_sbatch_args(tmp_path), *sets],
        cwd=ROOT, env=_fake_slurm(tmp_path, {"FAKE_SRUN_WAIT": "1"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_srun(tmp_path, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    srun = (tmp_path / "log/srun.args").read_text().splitlines()
    assert "--nodes=1" in srun and "--ntasks=1" in srun
    evaluation = ["--standalone", "--nnodes=1", "--nproc_per_node=2",
                  "-m", "megadyt", "eval", "--final", "--config"]  # fmt: skip
    assert _torchrun_args(tmp_path)[:8] == evaluation
    assert (tmp_path / "log/srun.signal").read_text().strip() == "TERM"
    assert "requeue 4242" in (tmp_path / "log/scontrol.calls").read_text()
    assert "the run is complete: nothing to train" in err
    assert "SIGUSR1 received; the evaluation ends" in err
    assert "the run is complete but its final table is not; requeued to evaluate it" in err


def test_sbatch_usr1_during_start_up_requeues_without_launching(tmp_path):
    proc = _start_sbatch(tmp_path, {"FAKE_SRUN_WAIT": "1"})
    time.sleep(0.5)  # the traps are set; `megadyt plan` is still starting
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert not (tmp_path / "log/srun.args").exists()
    assert (
        "during start-up" in err and "requeue 4242" in (tmp_path / "log/scontrol.calls").read_text()
    )


def test_torchrun_sh_trains_two_cpu_processes_and_ends_with_the_table(tmp_path):
    """The trainers (DP=2: rank 0 scores, rank 1 listens) write the final table; rerunning the
    command on the complete run only evaluates what is missing, with `megadyt eval --final`."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "NPROC": "2", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    sets = ["train.steps=2", "model.num_layers=2", "train.eval_iters=1", f"run.dir={run_dir}",
            "train.final_zero_shot_tasks=[stdlib_nextline]",
            "train.final_zero_shot_limit=4"]  # fmt: skip
    overrides = sum((["--set", s] for s in sets), [])

    def torchrun_sh() -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", "launch/torchrun.sh", "configs/tiny/dyt.yaml", *overrides],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    proc = torchrun_sh()
    assert (run_dir / "checkpoints/latest").read_text().strip().endswith("2")
    (log,) = (run_dir / "logs").glob("torchrun-*.log")
    assert "step       2/2" in log.read_text()
    assert "2 process(es)" in proc.stderr and "evaluating the final table" not in proc.stderr
    table = run_dir / "eval/step_0000002-stdlib_nextline.json"
    by_trainer = json.loads(table.read_text())
    table.unlink()

    proc = torchrun_sh()
    assert "the run is complete: nothing to train" in proc.stderr
    assert f"evaluating the final table at TP 1: {table}" in proc.stderr
    by_eval = json.loads(table.read_text())
    assert by_eval["tasks"] == by_trainer["tasks"] and by_eval["limit"] == 4
    starts = [h for h in RunDir(run_dir).read_history() if h["event"] == "start"]
    assert len(starts) == 1  # the second command trained nothing


PRINT_AND_CHECK_TORCH = """
import sys
from megadyt.cli.main import main
rc = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "no torch", rc)
"""


@pytest.mark.parametrize("field", ["run_dir", "run_name"])
def test_scripts_read_config_values_without_torch(tmp_path, field):
    """What the launch scripts call on a login node: one value, and no torch import (fast)."""
    sets = ["--set", f"run.dir={tmp_path}/r", "--set", "run.name=named"]
    expected = {"run_dir": str(tmp_path / "r"), "run_name": "named"}[field]
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_AND_CHECK_TORCH, "plan", "--config", "configs/tiny/dyt.yaml",
         *sets, "--print", field],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [expected, "no torch 0"]
    for script in (SBATCH, ROOT / "launch/torchrun.sh"):
        assert "plan --print run_dir --config" in script.read_text()


def test_scripts_config_value_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt", "plan", "--config", "configs/tiny/dyt.yaml",
         "--set", "train.stepz=3", "--print", "run_dir"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "train.stepz" in proc.stderr


def test_launch_env_reads_slurm_job_facts():
    env = LaunchEnv.from_environ(
        {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "SLURM_JOB_ID": "77",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_RESTART_COUNT": "3"}
    )  # fmt: skip
    assert (env.launcher, env.rank, env.job_id, env.num_nodes, env.node_rank) == (
        "torchrun", 9, "77", 2, 1)  # fmt: skip
    assert env.requeued and env.restart_count == 3
    plain = LaunchEnv.from_environ({"RANK": "0", "WORLD_SIZE": "1"})
    assert plain.job_id is None and not plain.requeued
