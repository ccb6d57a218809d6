"""Checkpoint cost: megadyt's save and resume against DeepSpeed's bare ones, in the same run.

megadyt's save is DeepSpeed's `save_checkpoint`, plus each rank's RNG file, the TP=1 weights
copy, the manifest (every file hashed, the hashing split across ranks) and `latest`. Its resume
is verification (again split across ranks), then DeepSpeed's `load_checkpoint` and the RNG
restore. For each ZeRO stage, both are timed in the same processes, alternating, and the ratio
megadyt / bare is reported (the issue's target is ≤ 1.15×). The model is the ~100M LLaMA shape
of train_throughput.py, with Adam states created by one step.

    python benchmarks/checkpoint.py [--zero 1 3] [--nproc 2] [--repeats 3] [--output out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from train_throughput import SIZES  # noqa: E402

from megadyt.parallel.testing import run_distributed  # noqa: E402


def _engine(zero: int):
    import torch

    from megadyt.config import load_config
    from megadyt.model import build_model
    from megadyt.parallel.distributed import device, init_distributed, launcher_variables
    from megadyt.training.engine import build_engine
    from megadyt.training.step import loss_of

    cfg = load_config(None, [*SIZES["100m"], f"parallel.zero_stage={zero}"])
    init_distributed(tp=1)
    model = build_model(cfg).to(device())
    params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions them
    with launcher_variables():
        engine = build_engine(cfg, model)
        tokens = torch.randint(
            0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.model.seq_length + 1)
        ).to(device())
        batch = {"tokens": tokens[:, :-1], "labels": tokens[:, 1:]}
        batch["loss_mask"] = torch.ones_like(batch["labels"])
        engine.backward(loss_of(engine, batch))
        engine.step()  # Adam's moments exist from here on: a realistic optimizer state
    return cfg, engine, params


def _round(engine, cfg, bare: Path, run, reverse: bool, timed) -> None:
    """One save and one load of each kind; `reverse` flips the order (alternating rounds)."""
    from megadyt.training.checkpoint import store
    from megadyt.training.checkpoint.weights import keeps_weights_copy, save_tp_shard

    def ours_save():
        with_weights = keeps_weights_copy(cfg, 1)  # step 1: a periodic save, not the last
        weights = lambda tag_dir: save_tp_shard(engine, cfg, tag_dir, with_weights)  # noqa: E731
        store.save_checkpoint(engine, run, 1, {"step": 1}, before_publish=weights)

    saves = [
        ("bare_save", lambda: engine.save_checkpoint(str(bare), tag="t", save_latest=False)),
        ("ours_save", ours_save),
    ]
    loads = [
        ("bare_load", lambda: engine.load_checkpoint(str(bare), tag="t")),
        ("ours_load", lambda: store.load_checkpoint(engine, run)),
    ]
    for pair in (saves, loads):
        for key, fn in pair[::-1] if reverse else pair:
            timed(key, fn)


def _measure(rank: int, world_size: int, zero: int, repeats: int, root: str) -> dict:
    import torch.distributed as dist

    from megadyt.training.run.layout import RunDir

    cfg, engine, params = _engine(zero)
    times: dict[str, list[float]] = {
        k: [] for k in ("bare_save", "ours_save", "bare_load", "ours_load")
    }

    def timed(key, fn):
        dist.barrier()
        start = time.perf_counter()
        fn()
        dist.barrier()
        times[key].append(time.perf_counter() - start)

    for i in range(repeats):
        bare, run = Path(root) / f"bare{i}", RunDir(Path(root) / f"ours{i}")
        _round(engine, cfg, bare, run, i % 2 == 1, timed)
        dist.barrier()
        if rank == 0:
            shutil.rmtree(bare, ignore_errors=True)
            shutil.rmtree(run.root, ignore_errors=True)
    return {"params": params, **{k: statistics.median(v) for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zero", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="bench-checkpoint.json")
    args = parser.parse_args()
    rows = []
    for zero in args.zero:
        with tempfile.TemporaryDirectory(dir=".") as root:
            result = run_distributed(
                _measure, world_size=args.nproc, timeout=1800,
                zero=zero, repeats=args.repeats, root=root,
            )[0]  # fmt: skip
        rows.append({"zero": zero, "nproc": args.nproc, **result})
    print(f"{'ZeRO':>4} {'params':>12} {'bare save':>10} {'ours save':>10} {'ratio':>6} "
          f"{'bare load':>10} {'ours load':>10} {'ratio':>6}")  # fmt: skip
    for r in rows:
        r["save_ratio"] = r["ours_save"] / r["bare_save"]
        r["load_ratio"] = r["ours_load"] / r["bare_load"]
        print(f"{r['zero']:>4} {r['params']:>12,} {r['bare_save']:>9.2f}s {r['ours_save']:>9.2f}s "
              f"{r['save_ratio']:>5.2f}x {r['bare_load']:>9.2f}s {r['ours_load']:>9.2f}s "
              f"{r['load_ratio']:>5.2f}x")  # fmt: skip
    report = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
              "repeats": args.repeats, "rows": rows}  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
