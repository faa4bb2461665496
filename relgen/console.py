"""What every ``python -m relgen.*`` command shares: quiet library defaults, one-line errors and
the exit statuses (:mod:`relgen.cli` describes them).

Errors caused by the user's input are printed as one line (``relgen: error: ...``) and exit
with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from relgen.errors import WRITE_ERRNOS, RelgenError, write_error

# Quiet, offline-friendly defaults; set before torch/diffusers/dgl are imported.
os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: Exit statuses (see :mod:`relgen.cli`).
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED = 2, 1, 130


def run_cli(body: Callable[[], int], on_error: Optional[Callable[[str], None]] = None) -> int:
    """Run a command's ``body``: a :class:`relgen.errors.RelgenError` becomes one line and exit 2
    (``on_error`` also gets the line, e.g. a sweep's row)."""
    try:
        return body()
    except RelgenError as exc:
        print(f"relgen: error: {exc}", file=sys.stderr)
        if on_error is not None:
            on_error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        # a folder that cannot be written (a read-only or full cache, output or export folder) wherever
        # the write happens: one line naming it; any other OSError is a bug and keeps its traceback
        if exc.errno not in WRITE_ERRNOS or not exc.filename:
            raise
        print(f"relgen: error: {write_error(exc, exc.filename, 'file or folder there')}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("relgen: interrupted; the last checkpoint is intact (resume=latest)", file=sys.stderr)
        return EXIT_INTERRUPTED
