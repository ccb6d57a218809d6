"""Divergence and distributed faults: loss spikes (log / skip / rollback), hung ranks, and
checkpoints that would execute code when unpickled.

Spikes are injected through the data: the samples of one global batch get random labels, which a
model that has memorised its (repetitive) training text finds very surprising.
"""

from __future__ import annotations

import json
import math
import os
import time

import pytest
import torch
from helpers import metrics_records

from megadyt.parallel.testing import run_distributed
from megadyt.training.guard import SpikeDetector

SMALL = [
    "model.num_layers=2",
    "model.hidden_size=64",
    "model.num_attention_heads=4",
    "model.ffn_hidden_size=96",
    "model.vocab_size=256",
    "model.seq_length=32",
    "model.norm=dyt",
    "train.steps=24",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.lr=3e-3",
    "train.warmup_steps=2",
    "train.eval_interval=1000",
    "train.save_interval=4",
    "train.spike_window=8",
    "train.spike_min_history=8",
]
GLOBAL_BATCH = 4
SPIKE_BATCH = 17  # global batch index with random labels: trained in step 18


class SpikySource:
    """One short pattern repeated (quickly learnt); the samples of `spike_batches` get random
    labels. Records every sample index it serves, in order."""

    def __init__(self, samples: int, spike_batches: set[int]) -> None:
        self.samples = samples
        self.tokens = (torch.arange(33) * 3) % 256
        g = torch.Generator().manual_seed(0)
        self.noise = torch.randint(0, 256, (33,), generator=g)
        self.spiky = {b * GLOBAL_BATCH + i for b in spike_batches for i in range(GLOBAL_BATCH)}
        self.served: list[int] = []

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int) -> dict:
        self.served.append(i)
        labels = self.noise if i in self.spiky else self.tokens
        return {"tokens": self.tokens[:-1], "labels": labels[1:], "loss_mask": torch.ones(32)}


def _config(overrides: list[str]):
    from megadyt.config import load_config

    return load_config(None, [*SMALL, *overrides])


# -- the detector on its own ----------------------------------------------------------------------
def test_detector_waits_for_history_then_flags_only_outliers():
    detector = SpikeDetector(window=10, threshold_std=4.0, min_history=5)
    for value in (2.0, 2.1, 1.9, 2.0):
        assert detector.check(9.0) is None  # not enough history yet
        detector.accept(value)
    detector.accept(2.05)
    assert detector.check(2.2) is None  # ordinary noise
    spike = detector.check(9.0)
    assert spike is not None and spike.z > 4.0 and spike.mean == pytest.approx(2.01)
    restored = SpikeDetector(window=10, threshold_std=4.0, min_history=5)
    restored.load_state_dict(detector.state_dict())
    assert restored.check(9.0) == spike


# -- responses in the training loop ----------------------------------------------------------
def _step_responses(rank: int, world_size: int, run_dir: str) -> dict:
    from megatron.core import parallel_state

    from megadyt.parallel.distributed import init_distributed
    from megadyt.training.trainer import Trainer

    init_distributed(tp=1)
    out = {}
    for action in ("log", "skip"):
        cfg = _config([f"run.dir={run_dir}/{action}", f"train.spike_action={action}"])
        trainer = Trainer(cfg, SpikySource(200, {SPIKE_BATCH}), None)
        for step in range(SPIKE_BATCH):
            assert not trainer.train_step(step).spikes, f"false spike in step {step + 1}"
        before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
        outcome = trainer.train_step(SPIKE_BATCH)
        params = dict(trainer.engine.module.named_parameters())
        out[action] = {
            "spikes": len(outcome.spikes),
            "applied": outcome.applied,
            "unchanged": all(torch.equal(before[n], p.detach()) for n, p in params.items()),
            "next_applied": trainer.train_step(SPIKE_BATCH + 1).applied,
        }
        parallel_state.destroy_model_parallel()
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=1)
    return out


def test_spike_is_logged_or_skipped(tmp_path):
    out = run_distributed(_step_responses, world_size=1, run_dir=str(tmp_path))[0]
    # both micro-batches of the random-label batch are spikes
    assert out["log"]["spikes"] == 2 and out["skip"]["spikes"] == 2
    # "log" trains on it; "skip" leaves every weight exactly as it was
    assert out["log"]["applied"] is True and not out["log"]["unchanged"]
    assert out["skip"]["applied"] is False and out["skip"]["unchanged"]
    assert out["skip"]["next_applied"] is True and out["log"]["next_applied"] is True


def _rollback_runs(rank: int, world_size: int, run_dir: str) -> dict:
    from megatron.core import parallel_state

    from megadyt.training.trainer import train

    overrides = ["train.spike_action=rollback", "train.spike_lr_factor=0.5"]
    results = {}
    for name, extra in (
        ("straight", []),
        ("interrupted", ["train.stop_at_step=20"]),
        ("resumed", []),
    ):
        target = "straight" if name == "straight" else "interrupted"
        cfg = _config([*overrides, *extra, f"run.dir={run_dir}/{target}"])
        source = SpikySource(200, {SPIKE_BATCH})
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        result = train(cfg, (source, None))
        results[name] = {
            "losses": result.losses,
            "rollbacks": result.rollbacks,
            "served": source.served,
        }
    return results


@pytest.mark.slow
def test_rollback_skips_the_offending_data_lowers_lr_and_resumes_exactly(tmp_path):
    from megadyt.training.optim import lr_at

    out = run_distributed(_rollback_runs, world_size=1, run_dir=str(tmp_path))[0]
    straight = out["straight"]
    assert straight["rollbacks"] == 1
    records = metrics_records(tmp_path / "straight")
    spikes = [r for r in records if r.get("event") == "spike"]
    rollbacks = [r for r in records if r.get("event") == "rollback"]
    assert {r["step"] for r in spikes} == {SPIKE_BATCH + 1}
    assert len(rollbacks) == 1 and rollbacks[0]["step"] == 16  # the last checkpoint
    assert rollbacks[0]["spike/data_offset"] == SPIKE_BATCH + 1 - 16
    # α calibration (model.alpha_init=calibrate) reads the first micro-batch once, before step 1
    served = straight["served"]
    assert served[:2] == [0, 1]
    # then every sample is trained on once: batches 16 and 17 are not seen again after the rollback
    trained = served[2:]
    assert len(trained) == len(set(trained))
    assert max(trained) == (24 + SPIKE_BATCH + 1 - 16) * GLOBAL_BATCH - 1
    # the LR after the rollback is halved; the run ends trained and finite
    cfg = _config([])
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[20] == pytest.approx(0.5 * lr_at(19, cfg.train), rel=1e-6)
    assert lrs[15] == pytest.approx(lr_at(14, cfg.train), rel=1e-6)
    assert all(math.isfinite(v) for v in straight["losses"].values())
    assert straight["losses"][24] < straight["losses"][16]  # training went on after it
    # a crash after the rollback resumes with the same data position, LR scale and history
    resumed = out["resumed"]["losses"]
    assert sorted(resumed) == [21, 22, 23, 24]
    for step in resumed:
        assert resumed[step] == straight["losses"][step], step


# -- a hung rank ---------------------------------------------------------------------------------
def _hang(rank: int, world_size: int, run_dir: str) -> str:
    from megadyt.training import trainer as trainer_module

    cfg = _config([f"run.dir={run_dir}", "parallel.timeout_minutes=0.2", "train.steps=6"])
    if rank == 1:
        original = trainer_module.Trainer.train_step

        def hanging_step(self, step):
            if step == 3:
                # stuck: no collective for longer than rank 0's timeout (12 s) plus its
                # health check (at most 12 s more)
                time.sleep(30)
            return original(self, step)

        trainer_module.Trainer.train_step = hanging_step
    try:
        trainer_module.train(cfg, (SpikySource(200, set()), None))
    except Exception as exc:  # noqa: BLE001 - the message is the result
        return f"{type(exc).__name__}: {exc}"
    return "finished"


@pytest.mark.multiprocess
def test_hung_rank_fails_the_job_naming_it(tmp_path):
    messages = run_distributed(_hang, world_size=2, timeout=120, run_dir=str(tmp_path))
    assert messages[0].startswith("CollectiveTimeoutError")
    assert "rank 1 did not answer" in messages[0]
    assert "parallel.timeout_minutes" in messages[0]
    assert messages[1] != "finished"


# -- checkpoints that carry code ------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _resume(rank: int, world_size: int, run_dir: str, steps: int) -> str:
    from megadyt.training.trainer import train

    try:
        cfg = _config([f"run.dir={run_dir}", f"train.steps={steps}"])
        result = train(cfg, (SpikySource(200, set()), None), allow_config_change=True)
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return f"trained to {result.last_step}"


def test_checkpoint_with_a_code_payload_is_refused_without_running_it(tmp_path):
    from megadyt.training.checkpoint import manifest as manifest_module
    from megadyt.training.run import layout as rundir

    assert (
        run_distributed(_resume, world_size=1, run_dir=str(tmp_path), steps=4)[0] == "trained to 4"
    )
    tag_dir = rundir.RunDir(tmp_path).tag_dir(rundir.tag_for(4))
    states = tag_dir / "mp_rank_00_model_states.pt"
    marker = tmp_path / "payload-ran"
    state = torch.load(states, weights_only=False)
    state["client_state_extra"] = _Payload(str(marker))
    torch.save(state, states)
    # the attacker also rewrites the manifest, so the checksum alone would not stop it
    manifest_path = rundir.manifest_file(tag_dir)
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][states.name] = {
        "bytes": states.stat().st_size,
        manifest["hash"]: manifest_module.digest_of(states, manifest["hash"]),
    }
    manifest_path.write_text(json.dumps(manifest))
    message = run_distributed(_resume, world_size=1, run_dir=str(tmp_path), steps=6)[0]
    assert not marker.exists()
    assert message.startswith("MegadytError") and states.name in message
    assert "does not load" in message


def _mismatched(rank: int, world_size: int, run_dir: str) -> str:
    from megadyt.training.trainer import train

    lr = "3e-3" if rank == 0 else "1e-3"  # a rank launched with another --set
    try:
        train(_config([f"run.dir={run_dir}", f"train.lr={lr}"]), (SpikySource(200, set()), None))
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return "finished"


@pytest.mark.multiprocess
def test_ranks_with_different_configs_stop_at_start_up(tmp_path):
    messages = run_distributed(_mismatched, world_size=2, run_dir=str(tmp_path))
    for message in messages:
        assert message.startswith("MegadytError: rank 1 has a different config"), message
    assert not (tmp_path / "checkpoints").exists()


# -- start-up that must not wait on a JIT build ---------------------------------------------------
def test_stale_extension_build_lock_does_not_stall_start_up(tmp_path, monkeypatch):
    """A build of DeepSpeed's CPU shm op killed part-way leaves torch's lock file; start-up must
    not wait on it (it used to wait forever: training never needs that op)."""
    from megadyt.parallel.cpu_shims import SHM_COMM_OP

    extensions = tmp_path / "torch_extensions"
    (extensions / SHM_COMM_OP).mkdir(parents=True)
    (extensions / SHM_COMM_OP / "lock").touch()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    run_dir = tmp_path / "run"
    message = run_distributed(_resume, world_size=1, timeout=150, run_dir=str(run_dir), steps=2)
    assert message[0] == "trained to 2"
