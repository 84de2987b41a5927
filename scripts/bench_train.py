"""Command line of ``gsva.bench.train_step`` (run it with ``--help``)."""

import sys

from gsva.bench.train_step import main

if __name__ == "__main__":
    sys.exit(main())
