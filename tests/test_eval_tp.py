"""Tensor-parallel evaluation: 2 gloo processes score checkpoints saved at TP=2, each loading
only its own shard (rank 0 runs the requests, rank 1 follows), and every document's score equals
the one-device score of the same checkpoint merged to TP=1. Step 2 keeps its weights only in
DeepSpeed's module files, step 4 (the last save) also in the weights copy."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT, TINY_CLI_RUN, run_cli

from megadyt.parallel.testing import run_distributed

pytestmark = pytest.mark.multiprocess

CHOICES = [  # (context, continuation): multiple-choice style requests
    ("def add(a, b):\n    return", " a + b"),
    ("def add(a, b):\n    return", " a - b"),
    ("import os\nprint(os.", "path.join('a', 'b'))"),
    ("The quick brown fox", " jumps over the lazy dog."),
    ("", "class Parser:\n    pass"),
]
DOCUMENTS = [  # rolling log-likelihood: some longer than one 64-token window
    "def read(path):\n    with open(path) as f:\n        return f.read()\n" * 6,
    "Return the number of items in a container.",
    "\n".join(f"value_{i} = {i} * {i}" for i in range(40)),
]


def _scores(rank: int, world_size: int, run_dir: str, train_first: bool) -> dict | None:
    from lm_eval.api.instance import Instance

    from megadyt.config import load_config
    from megadyt.evaluation.lm import MegadytLM
    from megadyt.parallel.distributed import init_distributed
    from megadyt.training.trainer import train

    if train_first:
        overrides = [*TINY_CLI_RUN, "parallel.tp=2", "train.save_interval=2", f"run.dir={run_dir}"]
        train(load_config(str(ROOT / "configs/tiny/dyt.yaml"), overrides))
    init_distributed(tp=world_size)
    out = {}
    for step in (2, 4):
        lm = MegadytLM(checkpoint=f"{run_dir}/checkpoints/step_{step:07d}", batch_size=2)
        if not lm.leads:
            lm.follow()
            continue
        try:
            choices = lm.loglikelihood(
                [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(CHOICES)]
            )
            rolling = lm.loglikelihood_rolling(
                [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(DOCUMENTS)]
            )
        finally:
            lm.release()
        out[step] = {"choices": choices, "rolling": rolling}
    return out or None


def test_tp2_eval_equals_tp1_eval_per_document(tmp_path):
    run_dir = str(tmp_path / "tp2")
    tp2 = run_distributed(_scores, world_size=2, run_dir=run_dir, train_first=True)
    assert tp2[1] is None  # rank 1 followed
    tp1 = run_distributed(_scores, world_size=1, run_dir=run_dir, train_first=False)[0]
    for step, copies in ((2, False), (4, True)):
        shards = sorted((tmp_path / "tp2" / "checkpoints" / f"step_{step:07d}").glob("weights/*"))
        assert len(shards) == 2
        assert all(("state" in torch.load(f, weights_only=True)) == copies for f in shards)
        got, want = tp2[0][step], tp1[step]
        assert len(got["choices"]) == len(CHOICES) and len(got["rolling"]) == len(DOCUMENTS)
        for (score, greedy), (want_score, want_greedy) in zip(got["choices"], want["choices"]):
            assert score == pytest.approx(want_score, abs=1e-4) and greedy == want_greedy
        assert got["rolling"] == pytest.approx(want["rolling"], abs=1e-4)
    final = tp1[4]["choices"]
    assert final[0][0] != pytest.approx(final[1][0], abs=1e-3)  # it tells the choices apart
    assert tp1[4]["rolling"] != pytest.approx(tp1[2]["rolling"], abs=1e-3)  # two checkpoints

    # the CLI refuses a TP size the process count does not provide, in one line
    refused = run_cli("eval", "--checkpoint", run_dir, "--tp", "2", timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines() == [
        "megadyt: error: --tp 2 needs exactly 2 processes, this has 1: run python -m "
        "megadyt.parallel.torchrun --nproc_per_node=2 -m megadyt eval --tp 2 ..."
    ]
