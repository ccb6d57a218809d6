"""Ctrl-C during training saves first, like SIGUSR1 (issue #29, item 9).

Real `megadyt train` processes in a session of their own; SIGINT goes to the whole process
group, as a terminal sends it. A single process and torchrun through megadyt's wrapper (whose
workers run in sessions of their own: the agent passes the Ctrl-C on) both stop at the end of
the step with a checkpoint, exit 0, and record the step. The second Ctrl-C's abort is tested in
tests/test_stop_signals.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, clean_env, train_command

from megadyt.parallel.stop_signals import CTRL_C_LINE
from megadyt.training.run.layout import RunDir


def _ctrl_c_after_step_2(cmd: list[str], run_dir: Path) -> tuple[int, str]:
    """Start `cmd`, press Ctrl-C (SIGINT to its process group) once step 2 is logged; returns
    (exit code, stdout and stderr)."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=clean_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        metrics = RunDir(run_dir).metrics
        deadline = time.monotonic() + 240
        while not (metrics.is_file() and '"step": 2,' in metrics.read_text()):
            assert proc.poll() is None, f"training exited early: {proc.communicate()[0][-3000:]}"
            assert time.monotonic() < deadline, "timed out waiting for step 2"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out


def _assert_saved_and_recorded(code: int, out: str, run_dir: Path) -> None:
    assert code == 0, out[-3000:]
    assert out.count(CTRL_C_LINE) == 1, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    run = RunDir(run_dir)
    step = run.latest_step()
    assert 2 <= step < 40
    assert f"megadyt: SIGINT received: stopped at step {step} with a checkpoint saved" in out
    end = run.read_history()[-1]
    assert (end["event"], end["step"], end["outcome"]) == ("end", step, "stopped by SIGINT")
    logged = [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()]
    assert max(logged) == step  # nothing trained past the saved step
    assert "Setting accelerator to CPU" not in out  # DeepSpeed's notice, expected here


def test_ctrl_c_saves_a_checkpoint_and_records_the_step(tmp_path):
    code, out = _ctrl_c_after_step_2(train_command(tmp_path, 40, 1000), tmp_path)
    _assert_saved_and_recorded(code, out, tmp_path)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_ctrl_c_under_the_torchrun_wrapper_saves_on_every_rank(tmp_path):
    wrapper = [sys.executable, "-m", "megadyt.parallel.torchrun", "--standalone",
               "--nproc_per_node=2"]  # fmt: skip
    code, out = _ctrl_c_after_step_2([*wrapper, *train_command(tmp_path, 40, 1000)[1:]], tmp_path)
    _assert_saved_and_recorded(code, out, tmp_path)
    assert "SignalException" not in out and "ChildFailedError" not in out, out[-3000:]
