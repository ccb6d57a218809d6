"""Zero-shot evaluation inside `megadyt train` (train.zero_shot_tasks) is logged like the loss."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import ROOT, clean_env, train_command

pytestmark = pytest.mark.multiprocess


def test_periodic_zero_shot_scores_reach_metrics_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cmd = train_command(tmp_path, 4, 100) + [
        "--set",
        "train.zero_shot_tasks=[stdlib_nextline]",
        "--set",
        "train.zero_shot_interval=2",
        "--set",
        "train.zero_shot_limit=16",
    ]
    subprocess.run(
        cmd,
        cwd=ROOT,
        env=clean_env(OMP_NUM_THREADS="1"),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r["eval/stdlib_nextline"] for r in records if "eval/stdlib_nextline" in r}
    assert sorted(scored) == [2, 4]
    # 16 four-way questions: accuracy is a multiple of 1/16 in [0, 1]
    assert all(0 <= v <= 1 and (v * 16) == int(v * 16) for v in scored.values())
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tb = {e.step: e.value for e in events.Scalars("eval/stdlib_nextline")}
    assert tb == pytest.approx(scored)
