"""The step guard's counters are part of a checkpoint: a resume neither forgets skipped steps
nor restarts train.max_bad_steps' count of consecutive ones."""

from __future__ import annotations

import pytest
from helpers import TokenSource, train_small

from megadyt.errors import MegadytError


def _train(run_dir, overrides: list[str], zero_mask_at: set[int]):
    # global batch 8: samples 8k..8k+7 are step k+1; an all-zero loss mask makes it NaN (skipped)
    data = (TokenSource(80, 32, 0, zero_mask_at=zero_mask_at), None)
    return train_small([f"run.dir={run_dir}", *overrides], data=data)


def test_skipped_steps_survive_a_resume(tmp_path):
    first = _train(tmp_path, ["train.stop_at_step=5"], {8, 9})  # step 2 skipped
    assert first.skipped_steps == 1
    second = _train(tmp_path, [], {8, 9})
    assert (second.first_step, second.last_step, second.skipped_steps) == (5, 10, 1)


def test_consecutive_bad_steps_count_across_a_resume(tmp_path):
    bad = {32, 33, 40, 41}  # steps 5 and 6
    overrides = ["train.max_bad_steps=2", "train.eval_interval=100"]
    first = _train(tmp_path, [*overrides, "train.stop_at_step=5"], bad)
    assert first.skipped_steps == 1
    with pytest.raises(MegadytError, match="2 consecutive skipped steps"):
        _train(tmp_path, overrides, bad)
