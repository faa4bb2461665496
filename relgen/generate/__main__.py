"""``python -m relgen.generate``."""

import sys

from relgen.generate.cli import main

if __name__ == "__main__":
    sys.exit(main())
