"""`megadyt eval`: zero-shot lm-eval tasks on a checkpoint (any TP/ZeRO layout).

On one device, the TP shards are merged. A model too large for one device runs across N
tensor-parallel processes: `python -m megadyt.parallel.torchrun --nproc_per_node=N -m megadyt
eval --tp N ...` on a checkpoint saved at TP=N; each rank loads its own shard, rank 0 runs
lm-eval and writes the results, the other ranks run the same forwards (`evaluation.tp_forward`).

Suites: `paper15` (the paper's 15 tasks; needs the Hugging Face hub or its cache) and `offline`
(tasks built from the held-out stdlib corpus, see evaluation/tasks). Prints a markdown table,
writes JSON with --output, and with --run-dir also writes the run's eval/step_NNNNNNN-SET.json
(SET names the task set, e.g. paper15; read by `megadyt compare`) and TensorBoard scalars
eval/<task> and eval/average at the checkpoint's step.
Exit code 0 when every task ran, 1 when some could not load (each is named with its reason).

`--final --config CONFIG [--set ...]` is the launch scripts' last step: the run's final table
(train.final_zero_shot_tasks on its train.steps checkpoint, at parallel.tp processes) when the
run is complete and the table is missing, exactly as the trainer writes it; else nothing.
`--prefetch --tasks paper15` downloads the tasks' datasets into the Hugging Face cache, without
a model, on a node that reaches the hub (compute nodes then read the cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from megadyt.cli.main import add_config_arguments
from megadyt.config import load_config
from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable
from megadyt.parallel.launch_env import launch_rank
from megadyt.training.run.layout import (
    RunDir,
    checkpoint_step,
    resolve_checkpoint,
    tag_for,
    task_set_label,
)

HELP = "evaluate a checkpoint on lm-eval tasks (suites: paper15, offline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        help="run dir, its checkpoints/ dir, or one checkpoints/step_NNNNNNN dir (required "
        "unless --final or --prefetch)",
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
        "--nproc_per_node=N; the checkpoint "
        "must have been saved at TP=N); 1 merges the shards on one device",
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
        help="also write DIR/eval/step_NNNNNNN-SET.json and TensorBoard scalars under DIR/tb",
    )
    parser.add_argument(
        "--final",
        action="store_true",
        help="the run's final table from --config (train.final_zero_shot_tasks on the "
        "train.steps checkpoint at parallel.tp), when the run is complete and it is missing",
    )
    parser.add_argument(
        "--prefetch",
        action="store_true",
        help="only download the --tasks' datasets into the Hugging Face cache (no model)",
    )
    add_config_arguments(parser, required=False)


def _check_arguments(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """Every user error this command can see before it imports torch or loads weights, so it
    is one line at once (under --tp, rank 0's): the numbers, the checkpoint, where the results
    go, and the task names. Returns (checkpoint dir, task names)."""
    from megadyt.evaluation.harness import check_task_names, expand_tasks
    from megadyt.parallel.launch_env import LaunchEnv

    if not args.checkpoint:
        raise MegadytError("--checkpoint is required (or --final --config CONFIG, or --prefetch)")
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
    from megadyt.evaluation.task_data import cache_only_if_hub_unreachable

    cache_only_if_hub_unreachable(args.tasks.split(","))  # before `datasets` is imported
    names = expand_tasks(args.tasks)
    check_task_names(names, args.include_path)
    return tag_dir, names


def run(args: argparse.Namespace) -> int:
    if args.prefetch:
        return _prefetch(args)
    if args.final and not _final_arguments(args):
        return 0
    tag_dir, names = _check_arguments(args)
    from megadyt.evaluation.harness import evaluate
    from megadyt.evaluation.lm import MegadytLM
    from megadyt.evaluation.offline import using_cache_dir
    from megadyt.evaluation.results import results_payload
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
    payload = results_payload(
        report,
        checkpoint=tag_dir,
        step=step,
        norm=lm.cfg.model.norm,
        dtype=str(next(lm.model.parameters()).dtype),
        tp=args.tp,
        limit=args.limit,
        num_fewshot=args.num_fewshot,
        seconds=time.perf_counter() - start,
    )
    return _publish(args, report, payload, step)


def _publish(args: argparse.Namespace, report, payload: dict, step: int) -> int:
    """Print the table and each failed task; write the JSON (--output, the run's eval/) and the
    run's TensorBoard scalars. Exit status 1 when some task failed."""
    from megadyt.evaluation.results import write_results

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
        targets.append(run_dir.eval_json(step, task_set_label(args.tasks.split(","))))
        prefix = "final/" if args.final else "eval/"  # the trainer's tags for its final table
        _log_tensorboard(run_dir, step, report.scalars(), prefix)
    for target in targets:
        write_results(target, payload)
        print(f"results written to {target}")
    return 1 if report.errors else 0


def _log_tensorboard(run_dir: RunDir, step: int, scalars: dict[str, float], prefix: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir.tensorboard))
    try:
        for key, value in scalars.items():
            writer.add_scalar(prefix + key.split("/", 1)[1], value, step)
    finally:
        writer.close()


def _final_arguments(args: argparse.Namespace) -> bool:
    """Fill in what `--final` evaluates from the run's config; False when nothing is missing."""
    if not args.config:
        raise MegadytError("--final needs --config CONFIG (and the --set values of the run)")
    cfg = load_config(args.config, args.overrides)
    t, run_dir = cfg.train, RunDir(cfg.run.dir)
    if not t.final_zero_shot_tasks:
        raise MegadytError(f"{args.config} sets no train.final_zero_shot_tasks: nothing is final")
    missing = run_dir.missing_final_table(t.steps, t.final_zero_shot_tasks)
    if missing is None:
        if launch_rank() == 0:
            left = run_dir.remaining_steps(t.steps)
            why = f"{left} steps are still to train" if left else "its final table exists"
            print(f"megadyt: nothing to evaluate in {run_dir.root}: {why}")
        return False
    args.checkpoint = str(run_dir.tag_dir(tag_for(t.steps)))
    args.tasks = ",".join(t.final_zero_shot_tasks)
    args.limit, args.tp, args.run_dir = t.final_zero_shot_limit, cfg.parallel.tp, str(run_dir.root)
    return True


def _prefetch(args: argparse.Namespace) -> int:
    """Load each task once, so that its dataset lands in the Hugging Face cache; exit 1 when
    any cannot (each named with its reason)."""
    from megadyt.evaluation.offline import cache_dir
    from megadyt.evaluation.task_data import cache_only_if_hub_unreachable, prefetch

    if cache_only_if_hub_unreachable(args.tasks.split(",")):
        print("megadyt: the Hugging Face hub is unreachable from here: checking its cache only")
    cache = load_config(args.config, args.overrides).data.cache_dir if args.config else cache_dir()
    ready = prefetch(args.tasks, cache)
    for name, problem in ready.items():
        print(f"{name}: {'ready' if problem is None else problem}")
    missing = [name for name, problem in ready.items() if problem]
    print(f"{len(ready) - len(missing)} of {len(ready)} tasks ready")
    return 1 if missing else 0
