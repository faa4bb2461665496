"""Each method against the baselines its paper uses, on the relworld model, with exact scoring.

    python benchmarks/relworld/methods.py                      # every task, the shipped model
    python benchmarks/relworld/methods.py --tasks inversion --samples 8 --pairs 6

Tasks (training data, prompts and seeds are deterministic functions of ``--seed``):

* ``inversion`` — the held-out relation (``inside``: pretraining shows it, captions never name
  it). ReVersion and textual inversion learn ``<R>`` from exemplar images of some shape pairs;
  every condition is scored on the *other* shape pairs. Conditions: the base model with the
  relation written out ("a red circle inside a blue square") and omitted ("a red circle and a
  blue square") — ReVersion's Table 1 baselines — textual inversion and ReVersion
  ("a red circle <R> a blue square").
* ``rectification`` — the biased pairs (pretraining shows e.g. a circle above a square, never a
  square above a circle). RRNet is trained on the unseen direction of each biased pair; it is
  scored on object-swapped prompt pairs with colours it never saw, at several λ (λ = 0 is the
  base model with the plain prompt): direction accuracy (both prompts right for one seed),
  relation accuracy of the unseen direction, object accuracy.
* ``customisation`` — a textured identity pretraining shows only alone and never names.
  RelationBooth (LoRA + keypoint loss; relworld has no pretrained image encoder, so its image
  branch is off) learns it from items of the identity in a relation, and is scored on other
  objects against the base model and the variant without the keypoint loss: relation
  accuracy and identity kept (:func:`identity_share`, the share of the identity's pixels in
  its texture tone, at least half of the ground truth's).

Every image is read twice by :mod:`relgen.relworld.detector`: *strict* (each object
found by colour and shape) and *colour* (each object found by colour alone, so layout is
scored even when shapes come out wrong). Rates carry 95 % Wilson intervals. Writes
``report.md``, ``results.json`` and one grid per task (rows = prompt x seed, columns =
conditions) into ``--out``; training data and runs go to ``--out/work`` (not kept in the repository).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from relgen.relworld import world as rw
from relgen.relworld.detector import (
    Detector,
    DetectorConfig,
    Reading,
    direction_accuracy,
    object_accuracy,
    rate,
    relation_accuracy,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchmark import Prompt, load_pipeline, plain, vae_roundtrip  # noqa: E402


# --------------------------------------------------------------------------------------------
# Configuration of one benchmark run
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What a benchmark run trains and renders (``main``'s arguments)."""

    model: Optional[str] = None  # diffusers folder / pkg:// URI; None = the shipped model
    seed: int = 0
    samples: int = 8  # images per prompt (seeds seed .. seed + samples - 1)
    pairs: int = 6  # prompts per task (object pairs with colours)
    steps: Optional[int] = None  # sampling steps; None = the backbone's
    guidance: Optional[float] = None
    batch_size: int = 16
    exemplars: int = 10  # ReVersion / textual-inversion exemplar images
    inversion_steps: int = 300  # optimizer steps of ReVersion and textual inversion (batch 2 x 4)
    rrnet_steps: int = 250  # RRNet optimizer steps (one image pair each)
    rrnet_images: int = 4  # images per RRNet folder
    scales: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0)
    identity_items: int = 6  # RelationBooth training items
    identity_steps: int = 300  # RelationBooth optimizer steps (batch 1 x 4)
    customisation_relation: str = "on_top_of"
    # the identity whose texture the relworld VAE keeps best (share of texture pixels: 0.50 in
    # ground truth, 0.34 after the VAE; stripes fall from 0.49 to 0.17)
    identity: str = "checkered_blue_square"
    # RelationBooth's released 1e-4 is for SDXL's 640-2048-wide attention; on relworld's 32-128-wide
    # one its rank-4 LoRA learnt no texture in 150 steps at 1e-4 and did at 1e-3
    identity_lr: float = 1e-3
    skip: tuple[str, ...] = ()  # condition names left out (the short regression run)
    grid_seeds: int = 2  # seeds shown per prompt in the grids
    train_seed: int = 0  # seed of the training runs (relgen's ``seed=``)


@dataclass
class Condition:
    """One column: a prompt form, optionally a trained run and its method options."""

    name: str
    form: str  # "written" | "omitted" | "token"
    run_dir: Optional[Path] = None
    options: dict = field(default_factory=dict)

    def text(self, p: Prompt, spec: rw.WorldSpec, token: str = "<R>") -> str:
        a, b = rw.object_name(p.a), rw.object_name(p.b)
        if self.form == "written":
            return p.text
        if self.form == "omitted":
            return rw.FREE_TEMPLATES[0].format(a=a, b=b)
        return f"a {a} {token} a {b}"


@dataclass
class TaskResult:
    name: str
    prompts: list[Prompt]
    conditions: list[Condition]
    swapped: bool = False
    images: dict[str, list[list]] = field(default_factory=dict)  # condition -> rows
    metrics: dict[str, dict] = field(default_factory=dict)
    train_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Prompts and training data
# --------------------------------------------------------------------------------------------


def split_shape_pairs(spec: rw.WorldSpec, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Ordered shape pairs, half for training and half held out for scoring (seeded)."""
    ordered = [(x, y) for x in spec.shapes for y in spec.shapes if x != y]
    order = np.random.default_rng([seed, 31]).permutation(len(ordered))
    half = len(ordered) // 2
    return [ordered[i] for i in order[:half]], [ordered[i] for i in order[half:]]


def colour_pair(rng: np.random.Generator, spec: rw.WorldSpec) -> tuple[str, str]:
    i, j = rng.choice(len(spec.colours), size=2, replace=False)
    return spec.colours[i], spec.colours[j]


def inversion_prompts(spec: rw.WorldSpec, pairs: int, seed: int, eval_pairs) -> list[Prompt]:
    rng = np.random.default_rng([seed, 41])
    relation = spec.heldout_relation
    out = []
    for k in range(pairs):
        sa, sb = eval_pairs[k % len(eval_pairs)]
        ca, cb = colour_pair(rng, spec)
        a, b = (sa, ca), (sb, cb)
        out.append(Prompt(a, relation, b, rw.prompt(a, relation, b, spec)))
    return out


def rectification_prompts(spec: rw.WorldSpec, pair: rw.BiasedPair, pairs: int, seed: int,
                          train_colours: tuple[str, str]) -> list[Prompt]:
    """Object-swapped prompts ``(unseen direction, seen direction)`` with colours other than the
    training folder's (so RRNet is scored on objects it was not trained on)."""
    rng = np.random.default_rng([seed, 43, spec.shapes.index(pair.first)])
    out = []
    for _ in range(pairs):
        while True:
            ca, cb = colour_pair(rng, spec)
            if (ca, cb) != train_colours:
                break
        a, b = (pair.second, ca), (pair.first, cb)  # A r B is the direction pretraining never shows
        for x, y in ((a, b), (b, a)):
            out.append(Prompt(x, pair.relation, y, f"a {rw.object_name(x)} is {rw.RELATIONS[pair.relation].phrase} "
                                                   f"a {rw.object_name(y)}"))
    return out


# --------------------------------------------------------------------------------------------
# Training through relgen's own entry point
# --------------------------------------------------------------------------------------------


def compose_run(overrides: list[str]):
    from hydra import compose, initialize_config_module

    import relgen.config  # noqa: F401  (registers the schemas)

    with initialize_config_module(config_module="relgen.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def train(method: str, dataset: str, root: Path, run_dir: Path, s: Settings, extra: list[str]) -> tuple[Path, float]:
    """Train ``method`` on the relworld backbone (what ``python -m relgen`` does); returns the
    run folder and the training seconds. A finished run in ``run_dir`` is reused."""
    import hashlib

    from relgen.backbones.loading import resolve_pretrained, weights_digest
    from relgen.run import run_training

    overrides = [f"method={method}", "backbone=relworld", f"dataset={dataset}", f"dataset.root={root}",
                 f"seed={s.train_seed}", "trainer.progress=false", "trainer.sample_at_end=false", "trainer.sample_every=0",
                 "trainer.tensorboard=false", "trainer.checkpoint_every=100000", *extra]
    if s.model:
        overrides.append(f"backbone.pretrained={s.model}")
    # the folder name carries a digest of the overrides and of the model's weights, so a finished
    # run is reused only for the same settings on the same model
    cfg = compose_run(overrides)
    model = weights_digest(Path(resolve_pretrained(cfg.backbone)))
    key = hashlib.sha256(" ".join([*overrides, model]).encode()).hexdigest()[:8]
    run_dir = run_dir.with_name(f"{run_dir.name}-{key}")
    if (run_dir / "export" / "relgen.json").exists() and (run_dir / "summary.json").exists():
        return run_dir, float(json.loads((run_dir / "summary.json").read_text())["train_seconds"])
    shutil.rmtree(run_dir, ignore_errors=True)
    run_training(cfg, str(run_dir))
    return run_dir, float(json.loads((run_dir / "summary.json").read_text())["train_seconds"])


# --------------------------------------------------------------------------------------------
# Rendering and scoring
# --------------------------------------------------------------------------------------------


def render_condition(cond: Condition, prompts: list[Prompt], spec: rw.WorldSpec, s: Settings) -> list[list]:
    """Images of every prompt under one condition (image i of each prompt: seed ``s.seed + i``)."""
    from relgen.generate import GenerationOptions, render
    from relgen.methods.base import Artifact

    if cond.run_dir is None:
        backbone, pipe = load_pipeline(s.model)
        artifact, token = Artifact(), "<R>"
    else:
        import relgen

        loaded = relgen.load(cond.run_dir)
        backbone = loaded.load_backbone()
        pipe = backbone.pipeline()
        loaded.apply(pipe)
        artifact, token = loaded.artifact, getattr(loaded.artifact, "token", "<R>")
    opts = GenerationOptions(seed=s.seed, num_images=s.samples, steps=s.steps, guidance=s.guidance,
                             batch_size=s.batch_size, method_options=dict(cond.options))
    return render(pipe, artifact, [cond.text(p, spec, token) for p in prompts], opts, backbone.cfg)


def score(prompts: list[Prompt], rows: list[list], detector: Detector, swapped: bool) -> dict:
    readings: list[list[Reading]] = [[detector.read(np.asarray(img), p.a, p.relation, p.b) for img in row]
                                     for p, row in zip(prompts, rows)]
    flat = [r for row in readings for r in row]
    out = {"relation_accuracy": relation_accuracy(flat), "object_accuracy": object_accuracy(flat)}
    if swapped:
        unseen = [r for row in readings[0::2] for r in row]
        out["unseen_relation_accuracy"] = relation_accuracy(unseen)
        out["direction_accuracy"] = direction_accuracy(
            [(x, y) for ab, ba in zip(readings[0::2], readings[1::2]) for x, y in zip(ab, ba)])
    return out


def readers(spec: rw.WorldSpec) -> dict[str, Detector]:
    """The two readings of every image: strict (colour and shape) and colour alone."""
    return {"strict": Detector(spec), "colour": Detector(spec, DetectorConfig(match_shape=False))}


def evaluate(task: TaskResult, spec: rw.WorldSpec, s: Settings) -> None:
    for cond in task.conditions:
        rows = render_condition(cond, task.prompts, spec, s)
        task.images[cond.name] = rows
        task.metrics[cond.name] = {k: score(task.prompts, rows, d, task.swapped) for k, d in readers(spec).items()}
        m = task.metrics[cond.name]["strict"]
        c = task.metrics[cond.name]["colour"]
        extra = f"  direction {m['direction_accuracy']} (colour {c['direction_accuracy']})" if task.swapped else ""
        print(f"[{task.name}] {cond.name:24s} relation {m['relation_accuracy']} (colour {c['relation_accuracy']})  "
              f"object {m['object_accuracy']}{extra}", flush=True)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def task_inversion(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    train_pairs, eval_pairs = split_shape_pairs(spec, s.seed)
    data = rw.write_world_reversion(out / "work" / "data" / f"inversion-{s.seed}", spec, seed=s.seed,
                                    relation=spec.heldout_relation, num_images=s.exemplars, pairs=train_pairs)
    task = TaskResult("inversion", inversion_prompts(spec, s.pairs, s.seed, eval_pairs), [])
    task.conditions = [c for c in (Condition("base, relation written", "written"),
                                   Condition("base, relation omitted", "omitted")) if c.name not in s.skip]
    for method, label in (("textual_inversion", "textual inversion"), ("reversion", "ReVersion")):
        if label in s.skip:
            continue
        run, seconds = train(method, "reversion_folder", data,
                             out / "work" / "runs" / f"{method}-{s.seed}-{s.train_seed}", s,
                             [f"method.max_steps={s.inversion_steps}"])
        task.conditions.append(Condition(label, "token", run))
        task.train_seconds[label] = seconds
    evaluate(task, spec, s)
    return task


def task_rectification(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    prompts, seconds, runs = [], {}, []
    for index, pair in enumerate(spec.biased):
        triple = (pair.second, pair.relation, pair.first)
        data = rw.write_world_rrnet(out / "work" / "data" / f"rrnet-{index}-{s.seed}", spec, seed=s.seed + index,
                                    triples=[triple], images_per_folder=s.rrnet_images)
        relation = json.loads(next(data.glob("*/index.json")).read_text())
        train_colours = tuple(relation["ARB"].split()[1:2] + relation["BRA"].split()[1:2])
        run, secs = train("rrnet", "rrnet_folder", data,
                          out / "work" / "runs" / f"rrnet-{index}-{s.seed}-{s.train_seed}", s,
                          [f"method.max_steps={s.rrnet_steps}"])
        runs.append(run)
        seconds[f"RRNet {' '.join(triple)}"] = secs
        prompts.append(rectification_prompts(spec, pair, s.pairs // 2 or 1, s.seed, train_colours))
    task = TaskResult("rectification", [p for group in prompts for p in group], [], swapped=True,
                      train_seconds=seconds)
    task.conditions = [Condition("base (λ = 0)", "written")]
    task.conditions += [Condition(f"RRNet λ = {lam:g}", "written", None, {"scale": lam}) for lam in s.scales if lam]
    # each biased pair has its own network: render each pair's prompts with its own run
    for cond in task.conditions:
        rows = []
        for run, group in zip(runs, prompts):
            c = Condition(cond.name, cond.form, run if cond.options else None, cond.options)
            rows += render_condition(c, group, spec, s)
        task.images[cond.name] = rows
        task.metrics[cond.name] = {k: score(task.prompts, rows, d, True) for k, d in readers(spec).items()}
        m, c = task.metrics[cond.name]["strict"], task.metrics[cond.name]["colour"]
        print(f"[rectification] {cond.name:16s} direction {m['direction_accuracy']} "
              f"(colour {c['direction_accuracy']})  unseen {m['unseen_relation_accuracy']} "
              f"(colour {c['unseen_relation_accuracy']})  object {m['object_accuracy']}", flush=True)
    return task


def identity_share(image: np.ndarray, mask: np.ndarray, ident: rw.Identity) -> float:
    """Share of an object's pixels nearer the identity's dark texture tone than its plain colour.

    The texture is what tells the identity from a plain object of the same shape and colour
    (a plain red circle scores ~0), so this share is its identity signal; pixels of the mask
    that took any other colour count against it.
    """
    from relgen.data.shapes import COLOURS

    pixels = np.asarray(image)[mask].astype(np.float64)
    if not len(pixels):
        return 0.0
    dark = np.linalg.norm(pixels - np.array(rw.texture_colour(ident.colour)), axis=1)
    base = np.linalg.norm(pixels - np.array(COLOURS[ident.colour]), axis=1)
    return float((dark < base).mean())


def reference_share(spec: rw.WorldSpec, ident: rw.Identity, vae=None, n: int = 32) -> tuple[float, float]:
    """Mean :func:`identity_share` of ground-truth renders of ``ident`` (sizes as in scenes),
    and of the same renders through ``vae`` (encode, decode: the most a generation can keep)."""
    shares, through = [], []
    for i in range(n):
        scene = rw.sample_single(np.random.default_rng([7, i]), spec, identity=ident)
        image, masks = scene.render()
        shares.append(identity_share(image, masks[0], ident))
        if vae is not None:
            through.append(identity_share(vae_roundtrip(vae, image[None])[0], masks[0], ident))
    return float(np.mean(shares)), float(np.mean(through)) if through else float("nan")


def task_customisation(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    """RelationBooth (LoRA + keypoint loss, image branch off) on an identity pretraining never
    named, against the base model and the variant without the keypoint loss."""
    by_name = {i.name: i for i in spec.identities}
    ident = by_name[s.identity]
    relation = s.customisation_relation
    data = rw.write_world_dreamrelation(out / "work" / "data" / f"customisation-{s.seed}", spec, seed=s.seed,
                                        relation=relation, num_items=s.identity_items, identity=ident.name)
    seen = {json.dumps(v["entities"]) for v in json.loads((data / "prompts.json").read_text()).values()}
    rng = np.random.default_rng([s.seed, 47])
    others = [(sh, c) for sh in spec.shapes for c in spec.colours if sh != ident.shape and c != ident.colour
              and json.dumps([ident.entity, rw.object_name((sh, c))]) not in seen]
    prompts = []
    for k in rng.permutation(len(others))[:s.pairs]:
        a, b = (ident.shape, ident.colour), others[int(k)]
        prompts.append(Prompt(a, relation, b, f"a {ident.entity} is {rw.RELATIONS[relation].phrase} "
                                              f"a {rw.object_name(b)}"))
    task = TaskResult("customisation", prompts, [Condition("base", "written")])
    # as conf/experiment/relationbooth_relworld.yaml: image branch off, no negative prompt
    common = [f"method.max_steps={s.identity_steps}", f"method.lr={s.identity_lr}", "method.scale=0",
              "method.negative_prompt=''"]
    for label, extra in (("RelationBooth (LoRA + keypoint)", []),
                         ("RelationBooth without keypoint loss", ["method.kp_weight=0"])):
        if label in s.skip:
            continue
        tag = "kp" if not extra else "nokp"
        run, seconds = train("relationbooth", "dreamrelation_folder", data,
                             out / "work" / "runs" / f"relationbooth-{tag}-{s.seed}-{s.train_seed}", s, common + extra)
        task.conditions.append(Condition(label, "written", run, {"scale": 0.0}))
        task.train_seconds[label] = seconds
    evaluate(task, spec, s)
    ref, ceiling = reference_share(spec, ident, load_pipeline(s.model)[0].vae)
    colour = readers(spec)["colour"]
    for cond in task.conditions:
        shares = []
        for p, row in zip(task.prompts, task.images[cond.name]):
            for img in row:
                found = colour.find(np.asarray(img), ident.shape, ident.colour)
                shares.append(identity_share(np.asarray(img), found.mask, ident) if found is not None else 0.0)
        task.metrics[cond.name]["identity"] = {
            "reference_share": ref, "vae_share": ceiling, "mean_share": float(np.mean(shares)),
            "kept": rate([x >= 0.5 * ref for x in shares])}
        print(f"[customisation] {cond.name:36s} identity kept {task.metrics[cond.name]['identity']['kept']} "
              f"(mean texture share {np.mean(shares):.3f}, ground truth {ref:.3f}, through the VAE {ceiling:.3f})",
              flush=True)
    return task


TASKS = {"inversion": task_inversion, "rectification": task_rectification, "customisation": task_customisation}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def task_grid(task: TaskResult, seeds: int, first_seed: int = 0):
    """Rows = prompt x first ``seeds`` seeds, columns = conditions; labelled with both."""
    from relgen.grid import labelled_grid

    rows, labels = [], []
    for i, prompt in enumerate(task.prompts):
        for j in range(min(seeds, len(next(iter(task.images.values()))[i]))):
            rows.append([task.images[c.name][i][j] for c in task.conditions])
            labels.append(f"{prompt.text}\nseed {first_seed + j}")
    return labelled_grid(rows, row_labels=labels, column_labels=[c.name for c in task.conditions],
                         title=f"relworld · {task.name}")


def write_report(out: Path, tasks: list[TaskResult], s: Settings, wall_s: float) -> Path:
    from relgen.generate import _save_png

    out.mkdir(parents=True, exist_ok=True)
    lines = ["# relworld: methods against their baselines", "",
             f"Model `{s.model or 'pkg://relgen.relworld/weights'}`. {s.samples} samples per prompt "
             f"(seeds {s.seed}..{s.seed + s.samples - 1}, the same for every condition), held-out object pairs. "
             "Rates in %, 95 % Wilson intervals. *strict*: objects found by colour and shape; *colour*: "
             f"by colour alone. Wall time {wall_s / 60:.1f} min on this CPU.", ""]
    for task in tasks:
        lines += [f"## {task.name}", ""]
        if task.swapped:
            lines += ["| condition | direction acc. | unseen-direction relation acc. | object acc. | "
                      "direction acc. (colour) | unseen relation acc. (colour) |", "|---|---|---|---|---|---|"]
            for c in task.conditions:
                m, k = task.metrics[c.name]["strict"], task.metrics[c.name]["colour"]
                lines.append(f"| {c.name} | {m['direction_accuracy']} | {m['unseen_relation_accuracy']} | "
                             f"{m['object_accuracy']} | {k['direction_accuracy']} | {k['unseen_relation_accuracy']} |")
        else:
            ident = "identity" in task.metrics[task.conditions[0].name]
            lines += ["| condition | relation acc. | object acc. | relation acc. (colour) | object acc. (colour) |"
                      + (" identity kept | texture share |" if ident else ""),
                      "|---|---|---|---|---|" + ("---|---|" if ident else "")]
            for c in task.conditions:
                m, k = task.metrics[c.name]["strict"], task.metrics[c.name]["colour"]
                row = (f"| {c.name} | {m['relation_accuracy']} | {m['object_accuracy']} | "
                       f"{k['relation_accuracy']} | {k['object_accuracy']} |")
                if ident:
                    i = task.metrics[c.name]["identity"]
                    row += (f" {i['kept']} | {i['mean_share']:.3f} (ground truth {i['reference_share']:.3f}, "
                            f"through the VAE {i['vae_share']:.3f}) |")
                lines.append(row)
        if task.train_seconds:
            lines += ["", "Training time: " + ", ".join(f"{k} {v:.0f} s" for k, v in task.train_seconds.items()) + "."]
        grid = out / f"grid_{task.name}.png"
        _save_png(task_grid(task, s.grid_seeds, s.seed), grid)
        lines += ["", f"Columns: {', '.join(c.name for c in task.conditions)}. Rows: each prompt at seeds "
                  f"{s.seed}..{s.seed + s.grid_seeds - 1}: " + "; ".join(f"`{p.text}`" for p in task.prompts) + ".",
                  "", f"![{task.name}]({grid.name})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    results = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items()},
               "wall_s": wall_s,
               "tasks": {t.name: {"prompts": [p.text for p in t.prompts], "train_seconds": t.train_seconds,
                                  "metrics": plain(t.metrics)} for t in tasks}}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return out / "report.md"


def run(s: Settings, tasks: list[str], out: Path) -> list[TaskResult]:
    spec = rw.WorldSpec()
    return [TASKS[name](spec, s, out) for name in tasks]


#: The short version run by the regression test (tests/integration/test_relworld_regression.py).
SHORT = dict(samples=6, pairs=2, steps=15, exemplars=8, inversion_steps=120, rrnet_steps=100, identity_items=4,
             identity_steps=300, scales=(0.0, 0.6),
             skip=("base, relation omitted", "textual inversion", "RelationBooth without keypoint loss"))

#: (task, method condition, baseline condition, reading, metric): each method's effect.
CHECKS = (
    ("inversion", "ReVersion", "base, relation written", "colour", "relation_accuracy"),
    ("rectification", "RRNet λ = 0.6", "base (λ = 0)", "colour", "direction_accuracy"),
    ("customisation", "RelationBooth (LoRA + keypoint)", "base", "identity", "kept"),
)

REGRESSION_FILE = HERE / "regression.json"


def effect(tasks: dict[str, TaskResult], check) -> float:
    """Method minus baseline (a difference of rates) for one :data:`CHECKS` entry."""
    task, method, baseline, reading, metric = check
    m = tasks[task].metrics
    return m[method][reading][metric].value - m[baseline][reading][metric].value


def regression_failures(calibration: dict, tasks: dict[str, TaskResult]) -> list[str]:
    """One line per enforced check of ``calibration`` (``regression.json``) whose effect in
    ``tasks`` falls below its margin; checks that are not enforced are not compared."""
    failures = []
    for c in calibration["checks"]:
        if not c["enforced"]:
            continue
        check = tuple(c[k] for k in ("task", "method", "baseline", "reading", "metric"))
        value = effect(tasks, check)
        if not value >= c["margin"]:  # NaN fails too
            failures.append(f"{check[0]}: {check[1]} - {check[2]} ({check[3]} {check[4]}) = {value:.3f}, "
                            f"below the margin {c['margin']:.3f} (calibrated effects {c['effects']})")
    return failures


def calibrate(seeds: list[int], out: Path, threads: int = 1) -> dict:
    """Run the short version with each seed (training and sampling) and set every check's
    margin from the spread of its effect: mean - 2 standard deviations (3 seeds: ddof = 1).
    Only checks whose margin is above zero are enforced by the regression test."""
    per_seed = []
    for seed in seeds:
        t0 = time.time()
        s = Settings(**SHORT, seed=seed, train_seed=seed)
        tasks = {t.name: t for t in run(s, list(TASKS), out / f"seed-{seed}")}
        per_seed.append({"seed": seed, "wall_s": time.time() - t0,
                         "effects": [effect(tasks, c) for c in CHECKS]})
    checks = []
    for k, check in enumerate(CHECKS):
        values = np.array([r["effects"][k] for r in per_seed])
        mean, sd = float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
        # a margin at or below zero means the short run shows no reliable effect: recorded, not enforced
        checks.append({"task": check[0], "method": check[1], "baseline": check[2], "reading": check[3],
                       "metric": check[4], "effects": values.tolist(), "mean": mean, "sd": sd,
                       "margin": mean - 2 * sd, "enforced": bool(mean - 2 * sd > 0)})
    result = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in SHORT.items()},
              "seeds": seeds, "runs": per_seed, "checks": checks}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    p.add_argument("--model", default=None, help="diffusers folder or pkg:// URI (default: the shipped model)")
    p.add_argument("--tasks", default=",".join(TASKS))
    for name in ("seed", "samples", "pairs", "steps", "batch_size", "exemplars", "inversion_steps", "rrnet_steps",
                 "rrnet_images", "grid_seeds", "train_seed", "identity_items", "identity_steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--customisation-relation", default=d.customisation_relation)
    p.add_argument("--identity", default=d.identity)
    p.add_argument("--identity-lr", type=float, default=d.identity_lr)
    p.add_argument("--scales", default=",".join(f"{x:g}" for x in d.scales), help="RRNet λ values")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "methods"))
    p.add_argument("--calibrate", default=None, metavar="SEEDS",
                   help="run the short regression version for these seeds (e.g. 0,1,2) and write "
                        "regression.json with each check's margin")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    if args.calibrate:
        result = calibrate([int(x) for x in args.calibrate.split(",")], Path(args.out) / "calibration")
        REGRESSION_FILE.write_text(json.dumps(result, indent=2) + "\n")
        for c in result["checks"]:
            print(f"{c['task']}: {c['method']} - {c['baseline']} ({c['reading']} {c['metric']}): "
                  f"effects {c['effects']}, margin {c['margin']:.3f}"
                  + ("" if c["enforced"] else " (no reliable effect: not enforced)"))
        return 0
    s = Settings(**{k: getattr(args, k) for k in vars(d) if k not in ("scales", "skip")},
                 scales=tuple(float(x) for x in args.scales.split(",")))
    t0 = time.time()
    out = Path(args.out)
    tasks = run(s, [t for t in args.tasks.split(",") if t], out)
    print(write_report(out, tasks, s, time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
