"""The training engine: layout invariance, exact resume, logging, and the non-finite guard.

Real DeepSpeed engines over megatron-core models in 1 or 2 gloo processes, on a small token
source; each spawned pair of processes runs several layouts in turn to keep the suite fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import TokenSource, small_config, train_small

from megadyt.errors import MegadytError
from megadyt.parallel.testing import run_distributed

pytestmark = pytest.mark.multiprocess


def _layouts(rank: int, world_size: int, layouts: list[list[str]]) -> list[dict]:
    return [train_small(o).losses for o in layouts]


def _resume(rank: int, world_size: int, tmp: str, zero: int) -> dict:
    """At DP=2: a straight run, a run split at step 5 and resumed, and the first half of a run
    (`to_dp1`) that DP=1 finishes; the second half of `from_dp1`, which DP=1 started."""
    common = [f"parallel.zero_stage={zero}"]
    straight = train_small([*common, f"run.dir={tmp}/straight"]).losses
    first = train_small([*common, f"run.dir={tmp}/split", "train.stop_at_step=5"])
    try:  # the same 2 ranks as TP=2 × DP=1: a change of TP is refused before anything loads
        train_small([*common, f"run.dir={tmp}/split", "parallel.tp=2"])
        tp_change = None
    except MegadytError as exc:
        tp_change = str(exc)
    second = train_small([*common, f"run.dir={tmp}/split"])  # the refusal changed nothing
    train_small([*common, f"run.dir={tmp}/to_dp1", "train.stop_at_step=5"])
    from_dp1 = train_small([*common, f"run.dir={tmp}/from_dp1"])
    return {
        "tp_change": tp_change,
        "straight": straight,
        "first": first.losses,
        "second": second.losses,
        "resumed_at": second.first_step,
        "from_dp1": from_dp1.losses,
        "from_dp1_at": from_dp1.first_step,
    }


def _start_at_dp1(rank: int, world_size: int, tmp: str, zero: int) -> None:
    train_small([f"parallel.zero_stage={zero}", f"run.dir={tmp}/from_dp1", "train.stop_at_step=5"])


def _finish_at_dp1(rank: int, world_size: int, tmp: str, zero: int) -> dict:
    result = train_small([f"parallel.zero_stage={zero}", f"run.dir={tmp}/to_dp1"])
    return {"to_dp1": result.losses, "to_dp1_at": result.first_step}


def _validation_loss_of_tp1_export(rank: int, world_size: int, run_dirs: list[str]) -> dict:
    """Each run's exported weights, merged to TP=1, scored on the validation samples; and the
    largest logit difference of its Hugging Face export (loaded by transformers) to them."""
    import tempfile

    import transformers

    from megadyt.interop.hf_export import TokenizerSource, write_hf_export
    from megadyt.model import build_model
    from megadyt.parallel.distributed import init_distributed, seed_everything
    from megadyt.training.checkpoint.weights import load_tp1_weights
    from megadyt.training.data import collate
    from megadyt.training.step import loss_of

    init_distributed(tp=1)
    seed_everything(0)
    valid = TokenSource(8, 32, 1)
    out = {}
    for run_dir in run_dirs:
        cfg, state = load_tp1_weights(run_dir)
        model = build_model(cfg, perform_initialization=False)
        model.load_state_dict(state, strict=False)
        with torch.no_grad():
            losses = [loss_of(model, collate(valid, range(i, i + 2))).item() for i in (0, 2, 4, 6)]
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
            ids_only = TokenizerSource(None, 1, 2, [])
            write_hf_export(cfg, state, Path(tmp) / "hf", "float32", ids_only)
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                Path(tmp) / "hf", trust_remote_code=True, dtype=torch.float32
            )
            tokens = collate(valid, range(0, 2))["tokens"]
            hf_diff = float((hf(input_ids=tokens).logits - model(tokens)).abs().max())
        out[run_dir] = (sum(losses) / len(losses), hf_diff)
    return out


def test_same_loss_curve_for_every_parallel_layout(tmp_path):
    single = run_distributed(
        _layouts,
        world_size=1,
        timeout=600,
        layouts=[
            [f"run.dir={tmp_path}/tp1dp1", "parallel.zero_stage=0"],
            [f"run.dir={tmp_path}/recompute", "parallel.zero_stage=0", "parallel.recompute=full"],
            [
                f"run.dir={tmp_path}/offload",
                "parallel.zero_stage=2",
                "parallel.offload_optimizer=true",
            ],
        ],
    )[0]
    pair = run_distributed(
        _layouts,
        world_size=2,
        layouts=[
            [f"run.dir={tmp_path}/z1", "parallel.zero_stage=1"],
            [f"run.dir={tmp_path}/z2", "parallel.zero_stage=2"],
            [f"run.dir={tmp_path}/z3", "parallel.zero_stage=3"],
            [
                f"run.dir={tmp_path}/tp2sp",
                "parallel.tp=2",
                "parallel.sp=true",
                "parallel.zero_stage=1",
            ],
        ],
    )[0]
    # Step 10 is each run's last save, with a weights copy; at step 5 ZeRO 0-2 keep none, and
    # the weights come from DeepSpeed's model-state files (one per TP rank); ZeRO-3 keeps one.
    checkpoints = {
        tmp_path / name / "checkpoints" / f"step_{step:07d}": step
        for name in ("tp1dp1", "z3", "tp2sp")
        for step in (5, 10)
    }
    exported = run_distributed(
        _validation_loss_of_tp1_export,
        world_size=1,
        run_dirs=[str(path) for path in checkpoints],
    )[0]
    for path, step in checkpoints.items():
        shards = sorted((path / "weights").glob("tp_rank_*.pt"))
        assert len(shards) == (2 if "tp2sp" in str(path) else 1), path
        has_copy = "state" in torch.load(shards[0], weights_only=True)
        assert has_copy == (step == 10 or "z3" in str(path)), path
        metrics = path.parent.parent / "metrics.jsonl"
        records = [json.loads(x) for x in metrics.read_text().splitlines()]
        logged = [r["valid/loss"] for r in records if r.get("step") == step and "valid/loss" in r]
        loss, hf_diff = exported[str(path)]
        assert logged and loss == pytest.approx(logged[0], rel=1e-5, abs=1e-6), path
        assert hf_diff <= 1e-4, (path, hf_diff)  # transformers computes the same logits
    # weights read from DeepSpeed's file are checked against the manifest like a weights copy
    from megadyt.errors import MegadytError
    from megadyt.training.checkpoint.weights import load_tp1_weights

    copy = tmp_path / "copy" / "step_0000005"
    shutil.copytree(tmp_path / "tp2sp" / "checkpoints" / "step_0000005", copy)
    module_file = copy / "mp_rank_01_model_states.pt"
    data = bytearray(module_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    module_file.write_bytes(bytes(data))
    with pytest.raises(MegadytError, match=f"checkpoint file {module_file} fails its checksum"):
        load_tp1_weights(copy)
    reference = single[0]
    assert len(reference) == 10 and reference[10] < reference[1]  # it learns
    names = ["full-recompute", "zero2-offload", "zero1", "zero2", "zero3", "tp2-sp"]
    for name, losses in zip(names, single[1:] + pair):
        got = torch.tensor([losses[s] for s in sorted(losses)])
        want = torch.tensor([reference[s] for s in sorted(reference)])
        torch.testing.assert_close(
            got,
            want,
            rtol=2e-4,
            atol=2e-5,
            msg=lambda m, n=name: f"{n} diverges from TP=1 DP=1: {m}",
        )


@pytest.mark.parametrize("zero", [1, 3])
def test_exact_resume_and_on_another_data_parallel_size(tmp_path, zero):
    """Resume at the same layout is bitwise; a resume on another data-parallel size (DeepSpeed
    universal checkpoint, converted on the fly) continues the uninterrupted DP=2 curve within
    fp32 tolerance (the gradient sums are ordered differently), both ways."""
    run_distributed(_start_at_dp1, world_size=1, tmp=str(tmp_path), zero=zero)
    result = run_distributed(_resume, world_size=2, tmp=str(tmp_path), zero=zero)[0]
    result.update(run_distributed(_finish_at_dp1, world_size=1, tmp=str(tmp_path), zero=zero)[0])
    assert sorted(result["first"]) == [1, 2, 3, 4, 5]
    assert result["resumed_at"] == 5
    assert sorted(result["second"]) == [6, 7, 8, 9, 10]
    for step, loss in result["second"].items():
        assert loss == result["straight"][step], (step, loss, result["straight"][step])
    latest = (tmp_path / "split" / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_0000010"
    assert "saved with tensor-parallel size 1, this run has 2" in result["tp_change"]
    for name in ("to_dp1", "from_dp1"):  # 2 -> 1 and 1 -> 2 ranks
        assert result[f"{name}_at"] == 5, name
        got = torch.tensor([result[name][s] for s in range(6, 11)])
        want = torch.tensor([result["straight"][s] for s in range(6, 11)])
        # another rank count sums gradients in another order: 5 steps drift by up to ~3e-4
        # (ZeRO-3 with separate no-decay groups measured 2.4e-4); a wrong reshard is far larger
        torch.testing.assert_close(
            got, want, rtol=5e-4, atol=2e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
        # converted (the log), and the conversion removed by the first save at the new size
        universal = tmp_path / name / "checkpoints" / "universal"
        assert sorted(p.name for p in universal.iterdir()) == ["step_0000005.log"]


def _one_run_for_logs(rank: int, world_size: int, run_dir: str) -> None:
    train_small([f"run.dir={run_dir}", "train.steps=6", "model.norm=derf"])


def test_tensorboard_and_metrics_jsonl_agree(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_distributed(_one_run_for_logs, world_size=1, run_dir=str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_s",
        "perf/mfu",
        "perf/tflops_per_device",
        "model/embedding_scale",
        "norm/alpha/layer0.attention",
        "norm/shift/final",
    ):
        assert all(key in r for r in train_records), key

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "perf/mfu",
        "norm/alpha/layer1.ffn",
        "norm/shift/layer0.attention",
        "valid/loss",
    ):
        assert tag in tags, tag
    tb_loss = {e.step: e.value for e in events.Scalars("train/loss")}
    for r in train_records:
        assert tb_loss[r["step"]] == pytest.approx(r["loss"], rel=1e-6)
    tb_alpha = {e.step: e.value for e in events.Scalars("norm/alpha/final")}
    assert tb_alpha[6] == pytest.approx(train_records[-1]["norm/alpha/final"], rel=1e-6)
    assert tb_alpha[6] != pytest.approx(0.5 * 8, rel=1e-9)  # α moved from its init


def _nan_guard(rank: int, world_size: int, run_dir: str, zero: int) -> dict:
    from megadyt.parallel.distributed import init_distributed
    from megadyt.training.trainer import Trainer

    cfg = small_config([f"run.dir={run_dir}", f"parallel.zero_stage={zero}"])
    init_distributed(tp=1)
    # step 1 starts with the micro-batch of samples 8, 9: an all-zero loss mask gives 0/0 = NaN
    trainer = Trainer(cfg, TokenSource(80, 32, 0, zero_mask_at={8, 9}), None)
    trainer.train_step(0)
    before = {n: p.detach().clone() for n, p in trainer.engine.module.named_parameters()}
    loss, _, applied, _ = trainer.train_step(1)
    unchanged = all(
        torch.equal(before[n], p.detach()) for n, p in trainer.engine.module.named_parameters()
    )
    loss2, _, applied2, _ = trainer.train_step(2)
    moved = not all(
        torch.equal(before[n], p.detach()) for n, p in trainer.engine.module.named_parameters()
    )
    finite_after = all(torch.isfinite(p).all() for p in trainer.engine.module.parameters())
    return {
        "loss": loss,
        "applied": applied,
        "unchanged": unchanged,
        "applied2": applied2,
        "moved": moved,
        "finite_after": finite_after,
        "loss2": loss2,
    }


@pytest.mark.parametrize("zero", [0, 1])
def test_non_finite_step_is_skipped(tmp_path, zero):
    r = run_distributed(_nan_guard, world_size=1, run_dir=str(tmp_path), zero=zero)[0]
    assert r["loss"] != r["loss"]  # NaN
    assert r["applied"] is False and r["unchanged"]
    assert r["applied2"] is True and r["moved"] and r["finite_after"]


def _zero3_as_plain_python(rank: int, world_size: int, run_dir: str) -> int:
    import os

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key)  # as `python -m megadyt train`, without torchrun
    result = train_small([f"run.dir={run_dir}", "parallel.zero_stage=3", "train.steps=2"])
    leaked = [k for k in ("RANK", "LOCAL_RANK", "MASTER_PORT") if k in os.environ]
    assert not leaked, leaked
    return result.last_step


def test_single_process_zero3_without_a_launcher(tmp_path):
    # DeepSpeed's ZeRO-3 reads LOCAL_RANK in every forward, not only at engine construction
    assert run_distributed(_zero3_as_plain_python, world_size=1, run_dir=str(tmp_path)) == [2]
