"""`megadyt eval`: zero-shot lm-eval tasks on a checkpoint (any TP/ZeRO layout).

On one device, the TP shards are merged. A model too large for one device runs across N
tensor-parallel processes: `python -m megadyt.parallel.torchrun --nproc_per_node=N -m megadyt
eval --tp N ...` on a checkpoint saved at TP=N; each rank loads its own shard, rank 0 runs
lm-eval and writes the results, the other ranks run the same forwards (`evaluation.tp_forward`).

Suites: `paper15` (the paper's 15 tasks; needs the Hugging Face hub or its cache) and `offline`
(tasks built from the held-out stdlib corpus, see evaluation/tasks). Prints a markdown table,
writes JSON with --output, and with --run-dir also writes the run's eval/step_NNNNNNN.json (read by
`megadyt compare`) and TensorBoard scalars eval/<task> and eval/average at the checkpoint's step.
Exit code 0 when every task ran, 1 when some could not load (each is named with its reason).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from megadyt.atomic import atomic_write_text
from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable
from megadyt.training.run.layout import RunDir, checkpoint_step, resolve_checkpoint

HELP = "evaluate a checkpoint on lm-eval tasks (suites: paper15, offline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="run dir, its checkpoints/ dir, or one checkpoints/step_NNNNNNN dir",
    )
    parser.add_argument(
        "--tasks",
        default="offline",
        help="suite (paper15, offline) or comma-separated lm-eval task names (default: offline)",
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="extra directory of lm-eval task YAMLs (repeatable)",
    )
    parser.add_argument("--limit", type=int, default=None, help="at most N documents per task")
    parser.add_argument("--num-fewshot", type=int, default=None, help="default: zero-shot")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel processes (run under python -m megadyt.parallel.torchrun "
        "--nproc_per_node=N; the checkpoint must have been saved at TP=N); 1 merges the shards "
        "on one device",
    )
    parser.add_argument("--output", metavar="FILE.json", help="write the results here")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="read the weights without checking them against the checkpoint's manifest",
    )
    parser.add_argument(
        "--run-dir",
        metavar="DIR",
        help="also write DIR/eval/step_NNNNNNN.json and TensorBoard scalars under DIR/tb",
    )


def _check_arguments(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Every user error this command can see before it imports torch or loads weights, so it
    is one line at once (under --tp, rank 0's): the numbers, the checkpoint, where the results
    go, and the task names. Returns (checkpoint dir, task names)."""
    from megadyt.evaluation.harness import check_task_names, expand_tasks
    from megadyt.parallel.launch_env import LaunchEnv

    if args.limit is not None and args.limit < 1:
        raise MegadytError(f"--limit {args.limit}: give a positive number of documents")
    if args.tp < 1:
        raise MegadytError(f"--tp {args.tp}: give a positive number of processes")
    world = LaunchEnv.from_environ().world_size if args.tp > 1 else 1
    if world != args.tp:
        raise MegadytError(
            f"--tp {args.tp} needs exactly {args.tp} processes, this has {world}: run python -m "
            f"megadyt.parallel.torchrun --nproc_per_node={args.tp} -m megadyt eval --tp "
            f"{args.tp} ..."
        )
    tag_dir = resolve_checkpoint(args.checkpoint)
    if args.output:
        check_writable(args.output, "--output")
    if args.run_dir:
        check_writable(args.run_dir, "--run-dir", directory=True)
    names = expand_tasks(args.tasks)
    check_task_names(names, args.include_path)
    return tag_dir, names


def run(args: argparse.Namespace) -> int:
    tag_dir, names = _check_arguments(args)
    from megadyt.evaluation.harness import evaluate
    from megadyt.evaluation.lm import MegadytLM
    from megadyt.evaluation.offline import using_cache_dir
    from megadyt.parallel.distributed import destroy_distributed, init_distributed

    step = checkpoint_step(tag_dir)
    start = time.perf_counter()
    try:
        if args.tp > 1:
            init_distributed(tp=args.tp)
        lm = MegadytLM(
            checkpoint=str(tag_dir),
            device=args.device,
            batch_size=args.batch_size,
            dtype=args.dtype,
            verify=not args.no_verify,
        )
        if not lm.leads:
            lm.follow()
            return 0
        print(f"evaluating step {step}: {tag_dir}" + (" (unverified)" if args.no_verify else ""))
        try:  # The offline tasks build their data under the run's data.cache_dir.
            with using_cache_dir(lm.cfg.data.cache_dir):
                report, _ = evaluate(
                    lm,
                    names,
                    include_paths=args.include_path,
                    limit=args.limit,
                    num_fewshot=args.num_fewshot,
                )
        finally:
            lm.release()
    finally:
        destroy_distributed()
    payload = {
        "checkpoint": str(tag_dir),
        "step": step,
        "norm": lm.cfg.model.norm,
        "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
        "tp": args.tp,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot or 0,
        "seconds": round(time.perf_counter() - start, 1),
        **report.to_dict(),
    }
    print(report.table())
    for name, reason in report.errors.items():
        print(f"megadyt: task {name} failed: {reason}", file=sys.stderr)
    if not report.scores:
        raise MegadytError(
            "no task could be evaluated: "
            + "; ".join(f"{n}: {r}" for n, r in report.errors.items())
        )
    targets = [Path(args.output)] if args.output else []
    if args.run_dir:
        run_dir = RunDir(args.run_dir)
        targets.append(run_dir.eval_json(step))
        _log_tensorboard(run_dir, step, report.scalars())
    for target in targets:
        atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
        print(f"results written to {target}")
    return 1 if report.errors else 0


def _log_tensorboard(run_dir: RunDir, step: int, scalars: dict[str, float]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir.tensorboard))
    try:
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)
    finally:
        writer.close()
