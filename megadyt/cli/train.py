"""`megadyt train`: pretrain as a single process, under torchrun (through
`megadyt.parallel.torchrun`) or under srun."""

from __future__ import annotations

import argparse
import signal

from megadyt.cli.main import add_config_arguments
from megadyt.config import load_config
from megadyt.errors import MegadytError
from megadyt.output_paths import check_writable
from megadyt.parallel.launch_env import launch_rank
from megadyt.parallel.stop_signals import StopRequest, ignore_stop_signals

HELP = "pretrain a model (single process, or under torchrun / srun)"
TAKES_STOP_REQUESTS = True  # a StopRequest first thing in `run` (`megadyt.cli.main`)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--resume-fallback",
        action="store_true",
        help="if the latest checkpoint fails verification, resume from the newest one that passes",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="let a resume change the training schedule (steps, LR, warmup, batch, optimizer, "
        "seed, data); the change is recorded in RUN/history.jsonl",
    )


def _train(args: argparse.Namespace, stop: StopRequest):
    """Load the config (before torch is imported: config errors are fast), then train."""
    overrides = [*args.overrides, *(["train.resume_fallback=true"] if args.resume_fallback else [])]
    cfg = load_config(args.config, overrides)
    check_writable(cfg.run.dir, "run.dir", directory=True)

    zero_shot = None
    if cfg.train.zero_shot_tasks or cfg.train.final_zero_shot_tasks:
        _hub_or_cache(cfg.train.zero_shot_tasks + cfg.train.final_zero_shot_tasks)
        from megadyt.evaluation.periodic import ZeroShot  # lm-eval: only for runs that use it

        zero_shot = ZeroShot()

    from megadyt.parallel.distributed import destroy_distributed
    from megadyt.training.trainer import train

    try:
        return cfg, train(
            cfg, zero_shot=zero_shot, allow_config_change=args.allow_config_change, stop=stop
        )
    finally:
        destroy_distributed()


def _hub_or_cache(tasks: list[str]) -> None:
    """Before `datasets` is imported: read hub tasks from the cache alone where the hub is
    unreachable (rank 0 loads them; see `evaluation.task_data`)."""
    from megadyt.evaluation.task_data import cache_only_if_hub_unreachable

    if launch_rank() == 0 and cache_only_if_hub_unreachable(tasks):
        print(
            "megadyt: the Hugging Face hub is unreachable from here: zero-shot datasets are "
            "read from its cache only (HF_HUB_OFFLINE=1)",
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    # First: a stop request (SIGUSR1/SIGTERM) during start-up is remembered, not fatal.
    with StopRequest() as stop:
        try:
            cfg, result = _train(args, stop)
        except MegadytError as exc:
            # SIGTERM is also how torchrun ends the other workers once one has failed: the
            # handler kept it from killing this rank, and rank 0 reports the error, once.
            if stop.received == signal.SIGTERM and launch_rank() != 0:
                return exc.exit_code
            raise
    ignore_stop_signals()
    # A stop request's line came from the trainer; a planned early stop is said here, once.
    if result.stop_signal is None and result.last_step < cfg.train.steps and launch_rank() == 0:
        print(
            f"megadyt: stopped at step {result.last_step} of {cfg.train.steps} "
            "(train.stop_at_step); raise or unset it and rerun to continue"
        )
    return 0
