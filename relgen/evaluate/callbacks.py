"""Hydra callback: after a multirun of ``relgen.evaluate``, one comparison report of all jobs.

Each job leaves ``relgen_evaluate_result.json`` in its Hydra output folder, naming its report;
at the end of the sweep this callback reads every job's ``results.json`` and writes
``comparison.md`` and ``comparison.json`` into the sweep folder: one row per job and condition,
one column per metric output (value and 95 % interval), and every job's claims.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from relgen.atomic import write_json, write_text


def comparison(sweep_dir: Path) -> tuple[dict[str, Any], str]:
    """The comparison of every finished job under ``sweep_dir``: ``(json, markdown)``."""
    from relgen.evaluate.__main__ import RESULT_POINTER

    jobs = []
    for pointer in sorted(sweep_dir.glob(f"*/{RESULT_POINTER}"), key=lambda p: p.parent.name):
        info = json.loads(pointer.read_text())
        results = json.loads((Path(info["report"]) / "results.json").read_text())
        jobs.append({"job": pointer.parent.name, "overrides": info["overrides"], "report": info["report"],
                     "results": results})
    columns: list[tuple[str, str]] = []
    for job in jobs:
        for metric, info in job["results"]["metrics"].items():
            for output in info["outputs"]:
                if (metric, output) not in columns and info["per_image"]:
                    columns.append((metric, output))
    common = set.intersection(*(set(j["overrides"]) for j in jobs)) if jobs else set()
    for job in jobs:  # the overrides that tell the jobs apart
        job["varying"] = [o for o in job["overrides"] if o not in common]
    lines = ["# Evaluation sweep: comparison", "", f"{len(jobs)} job(s) in `{sweep_dir}`; shared overrides: "
             f"`{' '.join(sorted(common))}`.", "",
             "| job | overrides | condition | " + " | ".join(f"{m}.{o}" for m, o in columns) + " |",
             "|---" * (len(columns) + 3) + "|"]
    rows = []
    for job in jobs:
        res = job["results"]
        for cond in res["conditions"]:
            cells = []
            for metric, output in columns:
                est = res["results"].get(cond["name"], {}).get(metric, {}).get(output)
                kind = res["metrics"].get(metric, {}).get("outputs", {}).get(output, "rate")
                k = 100.0 if kind == "rate" else 1.0
                cells.append("–" if not est or not est["n"] else
                             f"{k * est['value']:.1f} [{k * est['ci95'][0]:.1f}, {k * est['ci95'][1]:.1f}]")
            rows.append({"job": job["job"], "condition": cond["name"], "cells": cells})
            lines.append(f"| {job['job']} | {' '.join(job['varying'])} | {cond['name']} | " + " | ".join(cells) + " |")
    lines += ["", "## Claims", ""]
    for job in jobs:
        for name, claim in job["results"]["claims"].items():
            lines.append(f"- job {job['job']}: `{name}`: effect {claim['effect']:+.4g} "
                         f"[{claim['ci95'][0]:+.4g}, {claim['ci95'][1]:+.4g}], p = {claim['p']:.3g}")
    lines += ["", "Reports: " + ", ".join(f"[{j['job']}]({j['report']}/report.md)" for j in jobs), ""]
    data = {"schema": "relgen.evaluate.comparison/1", "jobs": [{k: v for k, v in j.items() if k != "results"}
                                                             for j in jobs],
            "columns": [f"{m}.{o}" for m, o in columns], "rows": rows,
            "claims": {j["job"]: j["results"]["claims"] for j in jobs}}
    return data, "\n".join(lines)


class ComparisonReport(Callback):
    """Writes ``comparison.md`` / ``comparison.json`` in the sweep folder when a multirun ends."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        data, markdown = comparison(sweep_dir)
        write_json(sweep_dir / "comparison.json", data, "sweep comparison", newline=False, indent=1)
        write_text(sweep_dir / "comparison.md", markdown, "sweep comparison")
        print(sweep_dir / "comparison.md")
