"""Command line of ``gsva.bench.evaluation`` (run it with ``--help``)."""

import sys

from gsva.bench.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
