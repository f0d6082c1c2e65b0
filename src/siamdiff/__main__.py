"""``python -m siamdiff`` is the ``siamdiff`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
