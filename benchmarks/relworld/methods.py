"""Each method against a baseline that could beat it, on the relworld model: claims with
paired tests and prompt-cluster intervals, in the strict reading first.

    python benchmarks/relworld/methods.py                 # one training seed (24 prompts x 8 seeds per task)
    python benchmarks/relworld/methods.py --full          # three training seeds, the published numbers
    python benchmarks/relworld/methods.py --quick         # a few prompts and steps, for development
    python benchmarks/relworld/methods.py --probes        # also probe the model (classifier, attention, oracle)
    python benchmarks/relworld/methods.py --calibrate 0,1,2   # the regression test's margins

The tasks, splits, conditions and statistics are described in :mod:`relgen.relworld.bench`.
Writes ``report.md``, ``results.json`` (with a top-level ``claims`` object) and one labelled grid
per task (rows = prompt x seed, columns = conditions) into ``--out``; training data and runs go
to ``--out/work`` (not kept in the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from relgen import atomic
from relgen.relworld import bench
from relgen.relworld.bench import CLAIMS, COMPARISONS, Settings, TaskResult

HERE = Path(__file__).resolve().parent

#: The short version run by the regression test (tests/integration/test_relworld_regression.py).
SHORT = dict(prompts=4, samples=6, steps=15, exemplars=8, inversion_steps=120, rrnet_steps=150, scales=(0.0, 0.6, 1.0),
             osp_samples=8,
             identity_items=4, identity_steps=300, identity_images=8,
             skip=("base, relation written", "base, relation omitted", "base, identity named",
                   "RelationBooth without keypoint loss"))

#: The claims whose effect the regression test protects (when the calibration finds it reliable).
CHECKS = ("reversion_vs_textual_inversion", "rrnet_vs_lambda0", "rrnet_lambda1_vs_lambda0",
          "relationbooth_vs_identity_baseline")

#: The base model's own checks in the regression test: the diffusion classifier (the UNet's
#: denoising error picks a ground-truth scene's true caption over its relation-flipped and its
#: object-swapped version) on ``scenes`` unbiased scenes. A model that ignores word order picks
#: the true caption about half the time.
BASE_SHORT = dict(scenes=48, kinds=("relation_flip", "object_swap"), chance=0.5)

#: Quick development settings.
QUICK = dict(prompts=4, samples=4, steps=15, inversion_steps=60, rrnet_steps=50, identity_steps=100,
             identity_images=6, grid_prompts=4)

REGRESSION_FILE = HERE / "regression.json"

#: Columns of each task's table: (metric, reading), the papers' readings side by side: relation
#: and direction with objects found by colour, object accuracy by colour and shape, and both.
METRICS = {
    "inversion": (("relation", "colour"), ("object", "strict"), ("relation", "both")),
    "rectification": (("direction", "colour"), ("unseen_relation", "colour"), ("object", "strict"),
                      ("direction", "both")),
    "rectification_generalisation": (("direction", "colour"), ("unseen_relation", "colour"), ("object", "strict"),
                                     ("direction", "both")),
    "customisation": (("identity", "strict"), ("relation", "colour"), ("object", "strict"), ("relation", "both")),
}

#: How the report names each (metric, reading) column.
COLUMN = {("relation", "colour"): "relation acc.", ("object", "strict"): "object acc. (colour + shape)",
          ("relation", "both"): "both", ("direction", "colour"): "direction acc.",
          ("unseen_relation", "colour"): "unseen direction, relation acc.", ("direction", "both"): "direction, both",
          ("identity", "strict"): "identity kept"}


def _settings_dict(s: Settings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()}


def task_grid(task: TaskResult, s: Settings):
    """Rows = prompt x seed (the first ``grid_prompts`` prompts, ``grid_seeds`` seeds, training
    seed 0), columns = conditions; each image carries its verdict: a green bar when the relation
    holds (objects found by colour) and both objects have their prompted shapes, amber when the
    relation holds but a shape is misread, red when the relation does not hold."""
    from relgen.grid import labelled_grid

    rows, labels = [], []
    for i in range(min(s.grid_prompts, len(task.prompts))):
        for j in range(min(s.grid_seeds, s.samples)):
            cells = []
            for c in task.conditions:
                by_colour = "colour" if "colour" in task.readings[c.name] else "strict"
                relation = bench.image_flags(task, c.name, by_colour)[0][i][j][0]
                objects = bench.image_flags(task, c.name, "strict")[0][i][j][1]
                verdict = ("right" if objects else "partly") if relation else "wrong"
                cells.append(bench.mark_verdict(task.images[c.name][0][i][j], verdict))
            rows.append(cells)
            labels.append(f"{task.prompts[i].text}\nseed {s.seed + j}")
    return labelled_grid(rows, row_labels=labels, column_labels=[c.name for c in task.conditions],
                         title=f"relworld {task.name}: green relation and shapes right, amber relation right but a "
                               "shape misread, red relation wrong")


def _model(s: Settings, task: str) -> str:
    """The model task ``task`` runs on."""
    return bench.task_settings(s, task)[1].model or "pkg://relgen.relworld/weights"


def write_report(out: Path, tasks: dict[str, TaskResult], s: Settings, wall_s: float, probes: dict | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    seeds = f"{s.seed}..{s.seed + s.samples - 1}"
    lines = ["# relworld: methods against their baselines", "",
             "Models: " + ", ".join(f"{name} on `{_model(s, name)}` (world {bench.TASK_WORLDS[name]})"
                                    for name in tasks) + f". Training seeds {list(s.train_seeds)}; the same "
             f"seeds for every condition ({s.samples} per prompt, {seeds}; {s.osp_samples} per prompt of an RRNet "
             f"network's own pair). Rates in %, 95 % cluster-bootstrap intervals (clusters: prompts, or trained "
             f"networks). Readings as the papers report them: *relation* and *direction* with the named objects found "
             f"by their colours (unique in every prompt), *object acc.* with each object found by colour and shape, "
             f"*both* the two together. Wall time {wall_s / 60:.1f} min.", ""]
    claims = bench.claims(tasks, s)
    comparisons = bench.claims(tasks, s, COMPARISONS)
    lines += ["## Claims", "", "| claim | metric | method | baseline | effect [95 % CI] | p (paired) "
              "| effect per training seed or network |", "|---|---|---|---|---|---|---|"]
    for name, c in {**claims, **comparisons}.items():
        per = ", ".join(f"{100 * e:+.1f}" for e in c["effects_per_train_seed"])
        lines.append(f"| {name}{'' if name in claims else ' (secondary)'} | {c['metric']} | {100 * c['method']:.1f} "
                     f"({c['method_condition']}) | {100 * c['baseline']:.1f} ({c['baseline_condition']}) | "
                     f"{100 * c['effect']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}] | "
                     f"{c['p']:.3g} | {per} |")
    lines.append("")
    results_tasks = {}
    for name, task in tasks.items():
        columns = METRICS[name]
        lines += [f"## {name}", ""]
        lines += ["| condition | " + " | ".join(COLUMN[c] for c in columns) + " |", "|---|" + "---|" * len(columns)]
        table = {}
        for cond in task.conditions:
            est = {f"{m}/{r}": bench.estimate(task, cond.name, m, r) for m, r in columns}
            table[cond.name] = {"estimates": est,
                                "per_unit": {f"{m}/{r}": bench.per_train_seed(task, cond.name, m, r) for m, r in columns}}
            cells = [f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]" for e in est.values()]
            lines.append(f"| {cond.name} | " + " | ".join(cells) + " |")
        if task.units:
            lines += ["", "Per network (" + ", ".join(COLUMN[c] for c in columns[:1]) + " by condition): " + "; ".join(
                f"{label}: " + ", ".join(f"{100 * bench.per_train_seed(task, c.name, *columns[0])[k]:.0f}"
                                         for c in task.conditions) for k, (label, _) in enumerate(task.units)) + "."]
        if task.train_seconds:
            lines += ["", "Training time per run: " + "; ".join(f"{k} {', '.join(f'{v:.0f}' for v in vs)} s"
                                                               for k, vs in task.train_seconds.items()) + "."]
        lines += [""] + [f"{n}" for n in task.notes]
        grid = out / f"grid_{name}.png"
        atomic.save_image(grid, task_grid(task, s), "benchmark grid")
        lines += ["", f"![{name}]({grid.name})", ""]
        results_tasks[name] = {"prompts": [p.text for p in task.prompts], "train_seconds": task.train_seconds,
                               "notes": task.notes, "conditions": bench.plain(table), "ceiling": task.ceiling,
                               "world": bench.TASK_WORLDS[name], "model": _model(s, name)}
    if probes:
        lines += ["## Probes of the model", "", "```json", json.dumps(bench.plain(probes), indent=1)[:6000], "```", ""]
    atomic.write_text(out / "report.md", "\n".join(lines), "benchmark report")
    results = {"settings": _settings_dict(s), "wall_s": wall_s, "claims": claims, "comparisons": comparisons,
               "tasks": results_tasks, "probes": bench.plain(probes) if probes else None}
    atomic.write_json(out / "results.json", results, "benchmark results", newline=False)
    return out / "report.md"


def calibrate(seeds: list[int], out: Path) -> dict:
    """Run the short version with each seed (training and sampling) and set every check's margin
    from the spread of its effect: mean - 2 standard deviations (ddof = 1). Only checks whose
    margin is above zero are enforced by the regression test. The base model's checks
    (:func:`calibrate_base`) are calibrated with the same seeds."""
    per_seed = []
    for seed in seeds:
        t0 = time.time()
        s = Settings(**SHORT, seed=seed, train_seeds=(seed,))
        tasks = sorted({CLAIMS[c][0] for c in CHECKS})
        claims = bench.claims(bench.run(s, tasks, out / f"seed-{seed}"), s)
        per_seed.append({"seed": seed, "wall_s": time.time() - t0, "effects": [claims[c]["effect"] for c in CHECKS]})
    checks = [{"claim": name, "effects": [r["effects"][k] for r in per_seed],
               **spread_margin([r["effects"][k] for r in per_seed], floor=0.0)} for k, name in enumerate(CHECKS)]
    return {"settings": bench.plain(SHORT), "models": model_digests(), "seeds": seeds, "runs": per_seed,
            "checks": checks, **calibrate_base(seeds)}


def spread_margin(values: list[float], floor: float) -> dict:
    """Mean, standard deviation (ddof = 1) and margin mean - 2 sd of one check's values over the
    calibration seeds; enforced when the margin is above ``floor``."""
    x = np.array(values, dtype=float)
    mean, sd = float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
    return {"mean": mean, "sd": sd, "margin": mean - 2 * sd, "enforced": bool(mean - 2 * sd > floor)}


def base_rates(seed: int, model: str | None = None) -> dict[str, float]:
    """The base model's diffusion-classifier rates (``BASE_SHORT``) on the scenes of ``seed``."""
    from diffusers import DDPMScheduler

    from relgen.relworld import probes
    from relgen.relworld import world as rw

    _, pipe = bench.load_pipeline(model)
    scenes = probes.probe_scenes(rw.WorldSpec(), BASE_SHORT["scenes"], seed)
    errors = probes.caption_errors(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae,
                                   DDPMScheduler.from_config(pipe.scheduler.config), scenes, seed=seed,
                                   kinds=("true", *BASE_SHORT["kinds"]))
    return {k: float(np.mean(errors["true"] < errors[k])) for k in BASE_SHORT["kinds"]}


def calibrate_base(seeds: list[int]) -> dict:
    """The base model's checks for each seed, with the margin mean - 2 sd (ddof = 1) of each
    rate, enforced when it is above chance."""
    rates = [base_rates(seed) for seed in seeds]
    checks = [{"check": kind, "rates": [r[kind] for r in rates],
               **spread_margin([r[kind] for r in rates], floor=BASE_SHORT["chance"])} for kind in BASE_SHORT["kinds"]]
    return {"base_settings": bench.plain(BASE_SHORT), "base_checks": checks}


def base_failures(calibration: dict, rates: dict[str, float]) -> list[str]:
    """One line per enforced base check of ``calibration`` whose rate in ``rates`` falls below
    its margin."""
    failures = []
    for c in calibration["base_checks"]:
        value = rates.get(c["check"], float("nan"))
        if c["enforced"] and not value >= c["margin"]:  # NaN fails too
            failures.append(f"base model, diffusion classifier against the {c['check'].replace('_', ' ')}: rate "
                            f"{value:.3f} below the margin {c['margin']:.3f} (calibrated rates {c['rates']})")
    return failures


def model_digest(model: str | None = None) -> str:
    """Content digest of a model the benchmark runs on (default: the shipped ``relworld`` weights)."""
    from relgen.backbones.loading import resolve_pretrained, weights_digest

    return weights_digest(Path(resolve_pretrained(bench.backbone_config(model))))


def model_digests() -> dict[str, str]:
    """Content digest of each world's shipped model, which ``regression.json`` records so that a
    retrained model cannot be checked against margins calibrated on another."""
    return {world: model_digest(model) for world, model in bench.WORLD_MODELS.items()}


def regression_failures(calibration: dict, claims: dict) -> list[str]:
    """One line per enforced check of ``calibration`` (``regression.json``) whose effect in
    ``claims`` falls below its margin; checks that are not enforced are not compared."""
    failures = []
    for c in calibration["checks"]:
        if not c["enforced"]:
            continue
        value = claims[c["claim"]]["effect"] if c["claim"] in claims else float("nan")
        if not value >= c["margin"]:  # NaN fails too
            failures.append(f"{c['claim']}: effect {value:.3f} below the margin {c['margin']:.3f} "
                            f"(calibrated effects {c['effects']})")
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    p.add_argument("--model", default=None,
                   help="diffusers folder or pkg:// URI for every task (default: each task's world's shipped model)")
    p.add_argument("--tasks", default=",".join(bench.TASKS))
    for name in ("seed", "prompts", "samples", "steps", "batch_size", "exemplars", "inversion_steps", "rrnet_steps",
                 "rrnet_images", "osp_samples", "generalisation_pairs", "grid_prompts", "grid_seeds", "identity_items", "identity_steps", "identity_images"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--rrnet-rows", default=d.rrnet_rows, help="RRNet's method.edit_rows")
    p.add_argument("--chosen-scale", type=float, default=d.chosen_scale)
    p.add_argument("--customisation-relation", default=d.customisation_relation)
    p.add_argument("--identity", default=d.identity, help="the customisation identity, '<colour> <shape>'")
    p.add_argument("--inversion-relation", default=d.inversion_relation)
    p.add_argument("--inversion-containers", default=",".join(d.inversion_containers),
                   help="outer shapes of inside in the inversion task")
    p.add_argument("--identity-lr", type=float, default=d.identity_lr)
    p.add_argument("--scales", default=",".join(f"{x:g}" for x in d.scales), help="RRNet λ values")
    p.add_argument("--skip", action="append", default=[], metavar="CONDITION",
                   help="leave out a condition by name (repeatable), e.g. --skip ReVersion")
    p.add_argument("--train-seeds", default="0")
    p.add_argument("--full", action="store_true", help="three training seeds (0, 1, 2)")
    p.add_argument("--quick", action="store_true", help="a few prompts and steps (development)")
    p.add_argument("--probes", action="store_true", help="also run the model probes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "methods"))
    p.add_argument("--calibrate", default=None, metavar="SEEDS",
                   help="run the short regression version for these seeds (e.g. 0,1,2) and write regression.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    if args.calibrate:
        result = calibrate([int(x) for x in args.calibrate.split(",")], Path(args.out) / "calibration")
        atomic.write_json(REGRESSION_FILE, result, "regression calibration")
        for c in result["checks"]:
            print(f"{c['claim']}: effects {c['effects']}, margin {c['margin']:.3f}"
                  + ("" if c["enforced"] else " (no reliable effect: not enforced)"))
        for c in result["base_checks"]:
            print(f"base model, {c['check']}: rates {c['rates']}, margin {c['margin']:.3f}"
                  + ("" if c["enforced"] else " (not above chance: not enforced)"))
        return 0
    s = Settings(**{k: getattr(args, k) for k in vars(d) if hasattr(args, k)
                    and k not in ("scales", "train_seeds", "skip", "inversion_containers")},
                 skip=tuple(args.skip), inversion_containers=tuple(args.inversion_containers.split(",")),
                 scales=tuple(float(x) for x in args.scales.split(",")),
                 train_seeds=(0, 1, 2) if args.full else tuple(int(x) for x in args.train_seeds.split(",")))
    if args.quick:
        s = replace(s, **QUICK)
    t0 = time.time()
    out = Path(args.out)
    probes = bench.model_probes(s) if args.probes else None
    tasks = bench.run(s, [t for t in args.tasks.split(",") if t], out)
    print(write_report(out, tasks, s, time.time() - t0, probes))
    for name, c in bench.claims(tasks, s).items():
        print(f"{name}: {100 * c['method']:.1f} vs {100 * c['baseline']:.1f} = {100 * c['effect']:+.1f} "
              f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}], p = {c['p']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
