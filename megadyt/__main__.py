"""`python -m megadyt` runs the same CLI as the `megadyt` console script."""

import sys

from megadyt.cli.main import main

sys.exit(main())
