"""`megadyt eval` finds every user error before it imports torch or loads weights, and says it
once (issue #29, item 8): task names are checked against lm-eval's own index first, so a typo
next to a valid task evaluates nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, clean_env

from megadyt.training.run.layout import resolve_checkpoint, weights_file


def test_a_misspelt_task_is_one_line_before_torch_or_the_weights(tiny_run, tmp_path):
    """A fresh process: the valid task beside the typo is not evaluated, the weights are never
    read (they are damaged here: reading them first would be another error), torch is never
    imported, and the one line names lm-eval's nearest task."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights_file(resolve_checkpoint(run), 0).write_bytes(b"damaged")
    script = (
        "import sys\n"
        "from megadyt.cli.main import main\n"
        f"code = main(['eval', '--checkpoint', {str(run)!r}, '--tasks', "
        "'stdlib_nextline,arc_eazy'])\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"),
    )  # fmt: skip
    assert proc.stdout == "no torch 2\n", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "megadyt: error: unknown task arc_eazy: not in lm-eval's tasks, evaluation/tasks or "
        "--include-path; did you mean arc_easy?"
    ]


@pytest.mark.multiprocess
def test_an_eval_error_under_the_wrapper_is_printed_once(tiny_run):
    """`eval --tp 2` on 2 ranks: both meet the error, rank 0 prints it. The other rank, no
    trainer, must take the SIGTERM torchrun ends it with (the wrapper hands the stop signals
    down blocked): alive after its grace period, it printed the error a second time."""
    proc = subprocess.run(
        [sys.executable, "-m", "megadyt.parallel.torchrun", "--standalone",
         "--nproc_per_node=2", "-m", "megadyt", "eval", "--tp", "2", "--checkpoint",
         str(tiny_run), "--limit", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=clean_env(),
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "megadyt: error" in line]
    assert proc.returncode == 2, out[-3000:]
    assert errors == ["megadyt: error: --limit 0: give a positive number of documents"], out
    assert "Traceback" not in out
