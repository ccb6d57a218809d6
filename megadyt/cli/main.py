"""The `megadyt` command line: one entry point, one module per subcommand.

Each subcommand module in `megadyt.cli` defines `HELP`, `add_arguments(parser)` and
`run(args) -> int`, and `TAKES_STOP_REQUESTS = True` if it handles SIGUSR1/SIGTERM itself
(`megadyt train`); every other command takes their default action. A `MegadytError` becomes a
one-line message and exit code 2; `--debug` shows the traceback instead. Under torchrun or srun
only rank 0 prints it at once: a user error is the same on every rank (they all read the same
config and agree on every check), and N copies of one line, interleaved, hide it. The other
ranks wait `OTHER_RANK_GRACE_S` first, for two reasons. Exiting at once could let the launcher
kill rank 0 before it prints. And a rank that is still alive afterwards was not stopped by the
launcher, so rank 0 did not fail: the error is this rank's own, and it prints it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from megadyt.errors import MegadytError
from megadyt.parallel.launch_env import launch_rank
from megadyt.parallel.stop_signals import default_stop_actions

OTHER_RANK_GRACE_S = 5.0
LAUNCH_HELP = """\
on N processes (GPUs, or CPU processes) of one node:
  python -m megadyt.parallel.torchrun --nproc_per_node=N -m megadyt train --config C
  (torchrun's arguments, without its traceback after a megadyt error; SIGUSR1, SIGTERM and
  a first Ctrl-C save a checkpoint and stop). launch/torchrun.sh does this with all local
  GPUs; on many nodes use launch/slurm/pretrain.sbatch (docs/launching.md)."""

# subcommand name -> module under megadyt.cli
COMMANDS = {
    "info": "info",
    "train": "train",
    "train-tokenizer": "train_tokenizer",
    "prepare-data": "prepare_data",
    "eval": "eval",
    "compare": "compare",
    "plan": "plan",
    "export": "export",
    "import-hf": "import_hf",
    "sweep": "sweep",
}


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """`--config PATH` and repeatable `--set section.key=value`, shared by every command."""
    parser.add_argument(
        "--config", required=required, help="YAML config, e.g. configs/tiny/dyt.yaml"
    )
    add_override_argument(parser)


def add_override_argument(
    parser: argparse.ArgumentParser,
    help: str = "override one config value (repeatable), e.g. --set parallel.tp=2",
) -> None:
    """Repeatable `--set section.key=value` into `args.overrides` (benchmarks use it too)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help=help,
    )  # fmt: skip


def _command_in(argv: list[str]) -> str | None:
    """The subcommand `argv` names (its first positional argument), if it is a known one."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (with `only`) one holding just that subcommand: each command module
    is imported to build its arguments, and some import torch, so `megadyt plan --print
    run_dir` in the launch scripts must not pay for the others."""
    parser = argparse.ArgumentParser(
        prog="megadyt",
        description=__doc__.splitlines()[0],
        epilog=LAUNCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(f"megadyt.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"megadyt.cli.{module_name}":
                continue  # a command not built yet
            raise
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        command.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        module.add_arguments(command)
        command.set_defaults(
            run=module.run, takes_stop_requests=getattr(module, "TAKES_STOP_REQUESTS", False)
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser(only=_command_in(argv)).parse_args(argv)
        if not args.takes_stop_requests:
            default_stop_actions()
        return int(args.run(args) or 0)
    except MegadytError as exc:
        if debug:
            raise
        rank = launch_rank()
        if rank != 0:
            time.sleep(OTHER_RANK_GRACE_S)  # the launcher stops this rank if rank 0 failed too
        print(f"megadyt: error: {exc}" if rank == 0 else f"megadyt: error: rank {rank}: {exc}",
              file=sys.stderr)  # fmt: skip
        return exc.exit_code
    except KeyboardInterrupt:
        if launch_rank() == 0:  # under torchrun every rank got the Ctrl-C: one line
            print("megadyt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
