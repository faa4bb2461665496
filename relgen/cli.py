"""Command-line entry points: ``python -m relgen`` (train), ``relgen.generate``, ``relgen.list``.

Errors caused by the user's input are printed as one line (``relgen: error: ...``) and exit
with status 2; nothing half-written is left behind.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable

# Quiet, offline-friendly defaults; set before torch/diffusers/dgl are imported.
os.environ.setdefault("DGLBACKEND", "pytorch")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(body: Callable[[], int]) -> int:
    from relgen.errors import RelgenError

    try:
        return body()
    except RelgenError as exc:
        print(f"relgen: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relgen: interrupted; the last checkpoint is intact (resume=latest)", file=sys.stderr)
        return 130


def train_main() -> None:
    """``python -m relgen method=<m> backbone=<b> dataset=<d> [trainer=...]``."""
    import hydra

    import relgen.config  # noqa: F401  (registers the schemas)

    @hydra.main(config_path="pkg://relgen.conf", config_name="config", version_base="1.3")
    def _app(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        from relgen.run import run_training

        run_dir = HydraConfig.get().runtime.output_dir
        code = run_cli(lambda: run_training(cfg, run_dir))
        if code:
            # In a sweep, raising lets Hydra record the failure and move on to the next job.
            if HydraConfig.get().mode.name == "MULTIRUN":
                raise SystemExit(code)
            sys.exit(code)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _app()
