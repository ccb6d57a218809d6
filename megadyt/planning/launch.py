"""Config values for the launch scripts, without importing torch (fast on a login node).

    python -m megadyt.planning.launch run-dir --config CONFIG [--set section.key=value ...]
    python -m megadyt.planning.launch run-name --config CONFIG [--set ...]

prints the absolute run.dir (or the run name) on one line; errors exit 2 with one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megadyt.config import load_config
from megadyt.errors import MegadytError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megadyt.planning.launch")
    parser.add_argument("field", choices=("run-dir", "run-name"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except MegadytError as exc:
        print(f"megadyt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.field == "run-dir":
        print(Path(cfg.run.dir).resolve())
    else:
        print(cfg.run.name or Path(cfg.run.dir).name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
