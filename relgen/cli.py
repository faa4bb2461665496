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


class JobFailed(RuntimeError):
    """A sweep job that stopped with a user error (already printed)."""


def train_main() -> None:
    """``python -m relgen method=<m> backbone=<b> dataset=<d> [trainer=...]``."""
    import hydra

    from relgen.registry import register_builtin_schemas

    register_builtin_schemas()  # before Hydra composes

    @hydra.main(config_path="pkg://relgen.conf", config_name="config", version_base="1.3")
    def _app(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        from relgen.run import run_training

        hc = HydraConfig.get()
        code = run_cli(lambda: run_training(cfg, hc.runtime.output_dir))
        if code:
            if hc.mode.name == "MULTIRUN":
                # An ordinary exception: Hydra records this job as failed and runs the others.
                raise JobFailed(f"job {hc.job.num} ({hc.job.override_dirname}) failed with exit code {code}")
            sys.exit(code)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _app()
