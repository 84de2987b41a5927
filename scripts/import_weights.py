"""Command line of ``gsva.model.released_import``: import the authors' released weights (``--help``)."""

import sys

from gsva.model.released_import import main

if __name__ == "__main__":
    sys.exit(main())
