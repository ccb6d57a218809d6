"""`python -m megadyt.parallel.torchrun ARGS`: torchrun, minus its traceback for a user error.

torchrun raises `ChildFailedError` whenever a worker exits non-zero, and prints it with a
traceback and a failure table; no torchrun flag or environment variable turns that off. A
megadyt user error has already been printed as one line (by rank 0) with exit code 2. So this
runs torchrun's own `run` with the same arguments and, when the first worker to fail exited
with 2, exits 2 quietly. Any other failure keeps torchrun's full report.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from megadyt.errors import MegadytError

USER_ERROR = MegadytError.exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as exc:
        _, first = exc.get_first_failure()
        if first.exitcode == USER_ERROR:
            return USER_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
