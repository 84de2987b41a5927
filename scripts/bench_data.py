"""Command line of ``gsva.bench.data_path`` (run it with ``--help``)."""

import sys

from gsva.bench.data_path import main

if __name__ == "__main__":
    sys.exit(main())
