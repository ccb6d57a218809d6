"""The training loop's parts, each on its own: step guard, metrics, evaluator, checkpointer.

The loop as a whole is covered by test_training, test_reliability and test_checkpoint_safety;
these tests pin each part's contract so it can change without running a training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import TokenSource, metrics_records, small_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megadyt.atomic import temp_path
from megadyt.errors import MegadytError
from megadyt.parallel.testing import run_distributed
from megadyt.training.evaluator import Evaluator
from megadyt.training.guard import StepGuard
from megadyt.training.metrics import MetricsProcessor, MetricsWriter
from megadyt.training.run.layout import RunDir, tag_for


def _writer(tmp_path) -> tuple[RunDir, MetricsWriter]:
    run = RunDir(tmp_path / "run")
    return run, MetricsWriter(run, enabled=True, total_steps=10, run_name="test")


def _guard(tmp_path, *overrides: str) -> StepGuard:
    cfg = small_config(["train.spike_min_history=3", "train.spike_window=5", *overrides])
    return StepGuard(cfg.train, tmp_path / "checkpoints")


# -- step guard ----------------------------------------------------------------------------------
@pytest.mark.parametrize("action", ["off", "log", "skip", "rollback"])
def test_guard_judges_spikes_only_when_asked(tmp_path, action):
    guard = _guard(tmp_path, f"train.spike_action={action}")
    verdicts = [guard.judge(loss, True) for loss in (2.0, 2.1, 1.9, 2.0, 50.0)]
    assert verdicts[:4] == [None] * 4
    assert (verdicts[4] is not None) == (action != "off")
    # a spike never joins the history; with judging off the loss is simply accepted
    assert (50.0 in guard.detector.history) == (action == "off")
    assert guard.drops_spikes == (action in ("skip", "rollback"))
    assert guard.wants_rollback([verdicts[4]]) == (action == "rollback")


def test_guard_stops_after_max_bad_steps_in_a_row(tmp_path):
    run, writer = _writer(tmp_path)
    guard = _guard(tmp_path, "train.max_bad_steps=3")
    guard.record(1, float("nan"), False, [], writer)
    guard.record(2, 2.0, True, [], writer)  # a good step resets the streak
    guard.record(3, float("nan"), False, [], writer)
    guard.record(4, float("inf"), False, [], writer)
    with pytest.raises(MegadytError, match=r"3 consecutive skipped steps \(up to step 5"):
        guard.record(5, float("nan"), False, [], writer)
    writer.close()
    assert guard.skipped == 4
    events = [r for r in metrics_records(run.root) if r.get("event") == "skipped_step"]
    assert [e["step"] for e in events] == [1, 3, 4, 5]


def test_guard_rollback_moves_data_and_lr_and_is_checkpointed(tmp_path):
    run, writer = _writer(tmp_path)
    guard = _guard(tmp_path, "train.spike_lr_factor=0.5", "train.max_rollbacks=2")
    for loss in (2.0, 2.1, 1.9):
        guard.judge(loss, True)
    # no checkpoint yet: the spiking batch is dropped and nothing moves
    assert guard.rollback(7, lambda: None, writer) is None
    assert (guard.data_offset, guard.lr_scale, guard.rollbacks) == (0, 1.0, 0)
    # back to step 4 after a spike in step index 7: batch 8 comes next, at half the LR
    stale = {"step": 4, "data_offset": 99, "lr_scale": 9.0, "rollbacks": 0, "spike_history": []}
    assert guard.rollback(7, lambda: stale, writer) == 4
    assert (guard.batch_of(4), guard.lr_scale, guard.rollbacks) == (8, 0.5, 1)
    assert list(guard.detector.history) == [2.0, 2.1, 1.9]  # kept, not the checkpoint's
    restored = _guard(tmp_path)
    restored.load_state_dict(guard.state_dict())
    assert restored.state_dict() == guard.state_dict()
    assert guard.rollback(5, lambda: {"step": 4}, writer) == 4
    with pytest.raises(MegadytError, match="after 2 rollbacks"):
        guard.rollback(5, lambda: {"step": 4}, writer)
    writer.close()
    assert [r["step"] for r in metrics_records(run.root) if r.get("event") == "rollback"] == [4, 4]


# -- metrics -------------------------------------------------------------------------------------
def test_writer_keeps_full_tags_in_tensorboard_and_short_ones_in_jsonl(tmp_path):
    run, writer = _writer(tmp_path)
    writer.log(3, {"train/loss": 2.5, "valid/loss": 2.75, "norm/alpha/final": 0.5})
    writer.event(4, "spike", {"spike/z": 7.0}, "loss spike")
    writer.close()
    assert metrics_records(run.root) == [
        {"step": 3, "loss": 2.5, "valid/loss": 2.75, "norm/alpha/final": 0.5},
        {"step": 4, "event": "spike", "spike/z": 7.0, "detail": "loss spike"},
    ]
    events = EventAccumulator(str(run.tensorboard)).Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == {3: 2.5}
    assert {e.step: e.value for e in events.Scalars("spike/z")} == {4: 7.0}


def test_disabled_writer_writes_nothing(tmp_path):
    run = RunDir(tmp_path / "run")
    writer = MetricsWriter(run, enabled=False, total_steps=10, run_name="test")
    writer.log(1, {"train/loss": 1.0})
    writer.event(1, "spike", {}, "x")
    writer.close()
    assert not run.root.exists()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_counts_training_time_only(tmp_path):
    cfg = small_config(["train.peak_tflops=10", "train.global_batch_size=8", "model.seq_length=32"])
    clock = _Clock()
    metrics = MetricsProcessor(cfg, world_size=2, clock=clock)
    clock.now += 300.0  # start-up: loading a checkpoint, opening the writer
    metrics.start_window()
    for _ in range(3):
        metrics.step_done()
        clock.now += 1.0  # one second of training per step
    with metrics.paused():
        clock.now += 60.0  # a validation pass or a save: not training
    figures = metrics.throughput()
    assert figures["train/tokens_per_s"] == pytest.approx(8 * 32 * 3 / 3.0)
    tflops = figures["train/tokens_per_s"] * metrics.flops_per_token / 1e12 / 2
    assert figures["perf/tflops_per_device"] == pytest.approx(tflops)
    assert figures["perf/mfu"] == pytest.approx(tflops / 10)
    assert metrics.tokens_at(5) == 5 * 8 * 32
    clock.now += 5.0  # writing the log record
    metrics.start_window()
    metrics.step_done()
    clock.now += 2.0
    assert metrics.throughput()["train/tokens_per_s"] == pytest.approx(8 * 32 / 2.0)  # new window


# -- evaluator -----------------------------------------------------------------------------------
def test_zero_shot_tasks_without_a_scorer_are_refused():
    cfg = small_config(["train.zero_shot_tasks=[stdlib_nextline]"])
    with pytest.raises(MegadytError, match="zero-shot scorer"):
        Evaluator(cfg, None)


class _Engine:
    module = torch.nn.Linear(2, 2)


def test_zero_shot_runs_at_its_interval_and_the_last_step(tmp_path):
    cfg = small_config(
        ["train.steps=5", "train.zero_shot_tasks=[stdlib_nextline]", "train.zero_shot_interval=2"]
    )
    calls = []

    def scorer(model, cfg_seen, tasks, limit):
        calls.append((model, tasks, limit))
        return {"eval/stdlib_nextline": 0.25 * len(calls)}

    run, writer = _writer(tmp_path)
    evaluator = Evaluator(cfg, None, scorer)
    for step in range(1, 6):
        evaluator.run_due(step, _Engine(), writer, tokens=step * 100)
    writer.close()
    assert [c[1] for c in calls] == [["stdlib_nextline"]] * 3
    assert all(c[0] is _Engine.module for c in calls)
    scored = [
        (r["step"], r["eval/stdlib_nextline"], r["tokens"]) for r in metrics_records(run.root)
    ]
    assert scored == [(2, 0.25, 200), (4, 0.5, 400), (5, 0.75, 500)]


class _FailingScorer:
    """What the real scorer raises on every rank when lm-eval fails on rank 0."""

    def resolve(self, tasks, cfg):
        pass

    def __call__(self, model, cfg, tasks, limit):
        raise MegadytError("zero-shot evaluation failed on rank 0: no documents")

    def table(self, *args):
        raise MegadytError("zero-shot evaluation failed on rank 0: no paper15 documents")


def test_a_failed_zero_shot_evaluation_warns_and_training_goes_on(tmp_path, capsys):
    run, writer = _writer(tmp_path)
    cfg = small_config(["train.steps=2", "train.zero_shot_tasks=[stdlib_nextline]",
                        "train.zero_shot_interval=1", "train.final_zero_shot_tasks=[paper15]",
                        f"run.dir={run.root}"])  # fmt: skip
    evaluator = Evaluator(cfg, None, _FailingScorer())
    evaluator.run_due(1, _Engine(), writer, tokens=100)
    evaluator.final_table(2, _Engine(), writer, tokens=200)
    writer.close()
    out = capsys.readouterr().out
    assert "megadyt: warning: step 1: zero-shot evaluation failed on rank 0: no documents; " \
        "training goes on" in out  # fmt: skip
    assert "megadyt: warning: step 2, final table: zero-shot evaluation failed on rank 0: no " \
        "paper15 documents; the run is complete" in out  # fmt: skip
    assert metrics_records(run.root) == []  # nothing scored, nothing pretends to be
    assert not (run.root / "eval").exists()


# -- checkpointer (a real DeepSpeed engine) ------------------------------------------------------
def _checkpointer(rank: int, world_size: int, run_dir: str) -> dict:
    from megadyt.parallel.distributed import init_distributed
    from megadyt.training.trainer import Trainer

    init_distributed(tp=1)
    published = []
    cfg = small_config([f"run.dir={run_dir}", "train.save_interval=4", "train.steps=10"])
    trainer = Trainer(
        cfg, TokenSource(80, 32, 0), None, after_publish=lambda r, s: published.append(s)
    )
    ckpt = trainer.checkpointer
    due = [s for s in range(1, 11) if trainer.cadence.saves(s)]
    trainer.train_step(0)
    weights = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    saved = ckpt.save(1, trainer.client_state(1))
    trainer.train_step(1)
    client = ckpt.load()
    reloaded = all(
        torch.equal(weights[n], p.detach()) for n, p in trainer.engine.module.named_parameters()
    )
    run = RunDir(run_dir)
    # a directory where publishing writes `latest` first: the save of step 2 fails at the end
    blocked = Path(temp_path(run.latest_file))
    blocked.mkdir(parents=True)
    try:
        ckpt.save(2, trainer.client_state(2))
        failed = "saved"
    except MegadytError as exc:
        failed = str(exc)
    cleaned = not run.tag_dir(tag_for(2)).exists()  # the step directory is removed
    blocked.mkdir(parents=True)
    cfg.train.on_save_error = "warn"
    warned = ckpt.save(2, trainer.client_state(2))
    return {
        "due": due,
        "saved": saved,
        "published": published,
        "latest": run.latest_tag(),
        "client_step": client["step"],
        "reloaded": reloaded,
        "failed": failed,
        "cleaned": cleaned,
        "warned": warned,
        "latest_after": run.latest_tag(),
    }


def test_checkpointer_saves_publishes_and_resumes(tmp_path):
    out = run_distributed(_checkpointer, world_size=1, run_dir=str(tmp_path))[0]
    assert out["due"] == [4, 8, 10]
    assert out["saved"] is True and out["published"] == [1]  # the hook saw only the good save
    assert out["latest"] == tag_for(1) and out["client_step"] == 1
    assert out["reloaded"]  # the weights of step 1 came back after step 2 changed them
    assert "checkpoint save at step 2 failed" in out["failed"]  # train.on_save_error=stop
    assert out["cleaned"]
    assert out["warned"] is False  # =warn: reported, training goes on
    assert out["latest_after"] == tag_for(1)
