"""``python -m relgen.evaluate run_dir=<run> [baseline=...] [prompts=...] [metrics=[...]]``.

A Hydra app with its own primary config (``conf/evaluate.yaml``); ``-m`` sweeps (e.g. over
``run_dir=a,b``) write one comparison report at the end (:mod:`relgen.evaluate.callbacks`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

#: The file each job writes into its Hydra output folder, naming its report (read by the
#: multirun comparison callback).
RESULT_POINTER = "relgen_evaluate_result.json"


def main() -> None:
    import hydra

    import relgen.cli  # noqa: F401  (quiet, offline-friendly library defaults)
    import relgen.evaluate.config  # noqa: F401  (registers the schemas)

    @hydra.main(config_path="pkg://relgen.conf", config_name="evaluate", version_base="1.3")
    def _app(cfg) -> None:
        relgen.cli.task_started()
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        from relgen.atomic import write_json
        from relgen.cli import record_job, run_cli
        from relgen.evaluate.config import EvaluateConfig
        from relgen.evaluate.harness import evaluate

        hc = HydraConfig.get()

        def body() -> int:
            schema = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluateConfig), cfg))
            out = evaluate(schema)
            pointer = Path(hc.runtime.output_dir) / RESULT_POINTER
            pointer.parent.mkdir(parents=True, exist_ok=True)
            write_json(pointer, {"report": str(out), "overrides": list(hc.overrides.task)}, "result pointer",
                       newline=False, indent=None)
            print(out / "report.md")
            return 0

        code = run_cli(body)
        if hc.mode.name == "MULTIRUN":
            # the other jobs still run; the sweep reports every failure once at its end
            record_job(hc.sweep.dir, hc.job.num, hc.job.override_dirname, code)
        elif code:
            sys.exit(code)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    relgen.cli.run_hydra_app(_app, flag_keys={})  # relgen's exit statuses (relgen.cli); no training flags here


if __name__ == "__main__":
    main()
