"""The relworld benchmark's library: each method against a baseline that could beat it, scored
exactly, with statistics that fit the design.

Entry scripts: ``benchmarks/relworld/methods.py`` (methods against baselines, claims, regression
margins) and ``benchmarks/relworld/benchmark.py`` (the base model alone). This module trains
methods through relgen's own training entry point, so nothing in :mod:`relgen.relworld`'s
``__init__`` imports it.

It evaluates through the evaluation harness, the one scoring path: every image is drawn by
:func:`relgen.evaluate.harness.generate_samples` (so through :func:`relgen.generate.render`, with
the harness's image cache under ``<out>/work/eval-cache``: a rerun with the same settings reuses
every image; cached images are reused whatever batch size drew them), and every reading is the
harness's ``relworld`` metric (:meth:`~relgen.relworld.metric.Relworld.read`, in the
strict and the colour reading). Two things read images with the same metric's detectors
(:func:`readers`) without going through the harness, because they generate nothing: the
identity's reference correlation and the model probes read ground-truth renders and their VAE
round trips.

Design (every choice is deterministic for ``Settings.seed``):

* **Held-out splits on unordered shape pairs** (``inversion``): the world's unbiased unordered
  shape pairs are split in half; a method's training data uses one half (both orders) and every
  condition is scored on the other half (both orders).
* **Same seeds for every condition**: image ``i`` of a prompt uses seed ``seed + i`` in every
  column, so conditions are paired image by image.
* **Statistics** (:mod:`relgen.evaluate.stats`): images of one prompt (or of one trained
  network) are not independent, so each rate gets a cluster bootstrap interval; each
  method-minus-baseline difference a paired cluster-bootstrap interval and McNemar's exact test
  on the paired outcomes. With several training seeds, the outcomes of every seed are pooled.
* **Readings as the papers report them** (:data:`READINGS`): relation accuracy with the named
  objects found by their colours, object accuracy with each found by colour and shape, and both.

Tasks:

Each task runs on the model of its world (:data:`TASK_WORLDS`, :data:`WORLD_MODELS`): RRNet's
on ``relworld`` (world 2, whose pretraining withholds one direction of the biased pairs);
inversion and customisation on ``relworld3`` (world 3), whose pretraining names ``inside`` and
sometimes names a shape without its colour, so that a learnt token can reach the relation and a
shape's name is a class.

* ``inversion`` -- ReVersion's protocol: exemplars of ``inside`` on some (inner, outer) shape
  pairs -> ``<R>`` -> new pairs (:func:`split_inside_pairs`; the outer shapes are those the
  model draws others inside, ``Settings.inversion_containers``). ReVersion against textual
  inversion (same exemplars, steps and token) and the prompt with the relation omitted; the
  relation written out shows what the model draws from the words.
* ``rectification`` -- RRNet's paper's protocol: one network per object-swapped pair (OSP) of a
  biased pair's unseen direction (pretraining shows a circle above a square, never the
  reverse), trained on that OSP and scored on it at new seeds (``osp_samples`` per prompt) at
  each λ, every column drawn through the run (λ = 0 is the base model); direction accuracy
  (both prompts of the pair right at the same seed) beside object accuracy.
* ``rectification_generalisation`` -- the secondary row: the same networks on OSPs of other
  colours (RRNet's graph nodes are the shape and relation words, so its edit is the same for
  every colour).
* ``customisation`` -- an identity named by its class: a cross of one colour (``Settings.identity``),
  prompted as "a cross is on top of a red circle", so that its colour is what a customisation
  must learn (the VAE keeps colours; it loses relworld's texture patterns at the sizes of
  two-object scenes). RelationBooth (LoRA + keypoint loss; relworld has no image encoder, so its
  image branch is off) against textual inversion of the identity learnt from identity-alone
  images (a baseline that can know the identity, as the paper's comparisons), the base model,
  the identity named in words (the ceiling), and RelationBooth without its keypoint loss (the
  ablation). Identity kept: the prompted shape found (in any colour but the partner's) and its
  colour the identity's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from relgen.config import compose_run
from relgen.evaluate import stats
from relgen.evaluate.samples import EvalPrompt, Sample
from relgen.relworld import world as rw
from relgen.relworld.detector import Detector, Reading
from relgen.relworld.metric import relworld_prompt, relworld_readings

# --------------------------------------------------------------------------------------------
# Shared pieces (also used by the base-model benchmark)
# --------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    a: tuple[str, str]
    relation: str
    b: tuple[str, str]
    text: str


def backbone_config(model: Optional[str]):
    """The relworld backbone's config (``model`` = a diffusers folder or pkg:// URI; None = shipped)."""
    return compose_run("backbone=relworld", *([f"backbone.pretrained={model}"] if model else [])).backbone


def load_pipeline(model: Optional[str], scheduler: Optional[str] = None):
    """The relworld backbone (``model`` = a diffusers folder or pkg:// URI; None = shipped) and
    its generation pipeline."""
    from relgen.backbones.loading import load_backbone

    backbone = load_backbone(backbone_config(model))
    return backbone, backbone.pipeline(scheduler)


def vae_roundtrip(vae, images: np.ndarray) -> np.ndarray:
    """uint8 [B, H, W, 3] images encoded (posterior mean) and decoded by ``vae``, as uint8."""
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        rec = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean).sample.float().cpu()
    return ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def plain(v):
    """JSON-able copy of a result tree (rates, estimates and dataclasses -> dicts)."""
    if isinstance(v, stats.Estimate):
        return v.as_dict()
    if hasattr(v, "k") and hasattr(v, "low"):
        return {"k": v.k, "n": v.n, "value": v.value, "low": v.low, "high": v.high}
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def mark_verdict(image, ok):
    """A copy of ``image`` (PIL) with a verdict drawn along its bottom edge: ``True`` or
    ``"right"`` green, ``"partly"`` amber, ``False`` or ``"wrong"`` red, ``None`` none (enlarged
    cells keep it visible)."""
    from PIL import ImageDraw

    from relgen.grid import VERDICT_COLOURS

    out = image.convert("RGB").copy()
    if ok is not None:
        verdict = ok if isinstance(ok, str) else ("right" if ok else "wrong")
        w, h = out.size
        ImageDraw.Draw(out).rectangle([0, h - max(2, h // 16), w - 1, h - 1], fill=VERDICT_COLOURS[verdict])
    return out


def readers(spec: rw.WorldSpec) -> dict[str, Detector]:
    """The detectors of the two readings, strict (colour and shape) and colour alone: those of
    the evaluation harness's ``relworld`` metric (:func:`relworld_readings`)."""
    return {name: metric.detector for name, metric in relworld_readings(spec=spec).items()}


# --------------------------------------------------------------------------------------------
# Settings and conditions
# --------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What a benchmark run trains and renders."""

    model: Optional[str] = None  # diffusers folder / pkg:// URI; None = the shipped model
    seed: int = 0  # prompts, training data and sampling seeds
    prompts: int = 24  # scoring prompts per task
    samples: int = 8  # images per prompt (seeds seed .. seed + samples - 1)
    steps: Optional[int] = None  # sampling steps; None = the backbone's
    guidance: Optional[float] = None
    batch_size: int = 16
    exemplars: int = 10  # ReVersion / textual-inversion exemplar images
    inversion_steps: int = 300  # optimizer steps of ReVersion and textual inversion
    rrnet_steps: int = 500  # the released recipe (100 epochs x 5 prompt pairs)
    rrnet_images: int = 4  # images per RRNet folder
    rrnet_rows: str = "eot"  # RRNet's method.edit_rows
    scales: tuple[float, ...] = (0.0, 0.6, 1.0)  # λ = 0 is the base model
    chosen_scale: float = 0.6  # RRNet's released default λ
    osp_samples: int = 32  # seeds per prompt of an RRNet network's own OSP
    generalisation_pairs: int = 2  # other-colour pairs per RRNet network (the secondary row)
    identity_items: int = 6  # RelationBooth training items
    identity_steps: int = 300
    # RelationBooth's released 1e-4 is for SDXL's 640-2048-wide attention; on relworld's 32-128-wide
    # one its rank-4 LoRA learnt no texture in 150 steps at 1e-4 and did at 1e-3
    identity_lr: float = 1e-3
    identity_images: int = 10  # identity-alone images of the textual-inversion baseline
    customisation_relation: str = "on_top_of"
    identity: str = "cyan cross"  # "colour shape": prompted as its shape alone
    inversion_relation: str = "inside"
    # the outer shapes of `inside` in the inversion task: those relworld 3 draws other shapes inside
    # (its word reaches 84 % by colour with a square or diamond outside, 0-35 % with a cross or triangle)
    inversion_containers: tuple[str, ...] = ("square", "diamond")
    train_seeds: tuple[int, ...] = (0,)  # relgen ``seed=`` of the training runs
    skip: tuple[str, ...] = ()  # condition names left out (the short regression run)
    grid_prompts: int = 6  # prompts shown in each grid
    grid_seeds: int = 2  # seeds shown per prompt in the grids


@dataclass
class Condition:
    """One column: a prompt form, optionally trained runs (one per training seed) and options."""

    name: str
    form: str  # "written" | "omitted" | "relation_token" | "entity_token" | "entity_named"
    runs: list[Optional[Path]] = field(default_factory=lambda: [None])
    options: dict = field(default_factory=dict)
    entity: str = ""  # "entity_named": the words that name A

    def text(self, p: Prompt, spec: rw.WorldSpec, token: str = "<R>") -> str:
        a, b = rw.object_name(p.a), rw.object_name(p.b)
        if self.form == "written":
            return p.text
        if self.form == "omitted":
            return rw.FREE_TEMPLATES[0].format(a=a, b=b)
        if self.form in ("entity_token", "entity_named"):  # A named by a learnt token, or by these words
            name = token if self.form == "entity_token" else self.entity
            return f"a {name} is {rw.RELATIONS[p.relation].phrase} a {b}"
        return f"a {a} {token} a {b}"


@dataclass
class TaskResult:
    name: str
    prompts: list[Prompt]
    conditions: list[Condition]
    swapped: bool = False  # prompts come in (unseen, seen) object-swapped pairs
    images: dict[str, list[list[list]]] = field(default_factory=dict)  # condition -> train seed -> prompt -> images
    readings: dict[str, dict[str, list[list[list[Reading]]]]] = field(default_factory=dict)
    extra: dict[str, list[list[list[float]]]] = field(default_factory=dict)  # e.g. identity scores
    train_seconds: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # (label, prompt indices) per trained unit when one network renders only its own prompts
    # (RRNet: one network per OSP); statistics cluster by unit
    units: list[tuple[str, list[int]]] = field(default_factory=list)
    ceiling: dict[str, Any] = field(default_factory=dict)  # the task's ceiling, when it measures one


# --------------------------------------------------------------------------------------------
# Splits and prompts
# --------------------------------------------------------------------------------------------


def split_unordered_pairs(spec: rw.WorldSpec, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The unbiased unordered shape pairs split in half (seeded): ``(train, held_out)``, each as
    ordered pairs in both orders. No held-out pair appears in training in either order."""
    biased = {frozenset((p.first, p.second)) for p in spec.biased}
    unordered = [(x, y) for i, x in enumerate(spec.shapes) for y in spec.shapes[i + 1:]
                 if frozenset((x, y)) not in biased]
    order = np.random.default_rng([seed, 31]).permutation(len(unordered))
    half = len(unordered) // 2

    def both(indices) -> list[tuple[str, str]]:
        return [pair for i in indices for pair in (unordered[i], unordered[i][::-1])]

    return both(order[:half]), both(order[half:])


def split_inside_pairs(spec: rw.WorldSpec, containers: Sequence[str], seed: int
                       ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(inner, outer)`` shape pairs of ``inside`` with an outer shape from ``containers``, split
    in half (seeded) per container: ``(train, held_out)``, so that every held-out pair is a new
    pair and each container is on both sides."""
    train, held = [], []
    for k, outer in enumerate(containers):
        inner = [x for x in spec.shapes if x != outer]
        order = np.random.default_rng([seed, 37, k]).permutation(len(inner))
        half = len(inner) // 2
        train += [(inner[i], outer) for i in order[:half]]
        held += [(inner[i], outer) for i in order[half:]]
    return train, held


def colour_pair(rng: np.random.Generator, spec: rw.WorldSpec) -> tuple[str, str]:
    i, j = rng.choice(len(spec.colours), size=2, replace=False)
    return spec.colours[i], spec.colours[j]


def inversion_prompts(spec: rw.WorldSpec, n: int, seed: int, eval_pairs, relation: str = "inside") -> list[Prompt]:
    """``n`` distinct prompts of ``relation`` on held-out shape pairs (cycling through them),
    colours drawn per prompt."""
    rng = np.random.default_rng([seed, 41])
    out, seen = [], set()
    for k in range(n):
        sa, sb = eval_pairs[k % len(eval_pairs)]
        while True:
            ca, cb = colour_pair(rng, spec)
            if (sa, ca, sb, cb) not in seen:
                break
        seen.add((sa, ca, sb, cb))
        a, b = (sa, ca), (sb, cb)
        out.append(Prompt(a, relation, b, rw.prompt(a, relation, b, spec)))
    return out


def rectification_prompts(spec: rw.WorldSpec, pair: rw.BiasedPair, n_pairs: int, seed: int,
                          train_colours: tuple[str, str]) -> list[Prompt]:
    """``n_pairs`` distinct object-swapped prompt pairs ``(unseen direction, seen direction)``
    with colours other than the training folder's."""
    rng = np.random.default_rng([seed, 43, spec.shapes.index(pair.first)])
    out, used = [], {tuple(train_colours)}
    for _ in range(n_pairs):
        while True:
            ca, cb = colour_pair(rng, spec)
            if (ca, cb) not in used:
                break
        used.add((ca, cb))
        a, b = (pair.second, ca), (pair.first, cb)  # "A r B" is the direction pretraining never shows
        for x, y in ((a, b), (b, a)):
            out.append(Prompt(x, pair.relation, y, f"a {rw.object_name(x)} is {rw.RELATIONS[pair.relation].phrase} "
                                                   f"a {rw.object_name(y)}"))
    return out


# --------------------------------------------------------------------------------------------
# Training through relgen's own entry point
# --------------------------------------------------------------------------------------------


def train(method: str, dataset: str, root: Path, run_dir: Path, s: Settings, train_seed: int,
          extra: list[str]) -> tuple[Path, float]:
    """Train ``method`` on the relworld backbone (what ``python -m relgen`` does); returns the
    run folder and the training seconds. A finished run with the same settings on the same
    model weights is reused (the folder name carries a digest of both)."""
    from relgen.backbones.loading import resolve_pretrained, weights_digest
    from relgen.run import run_training

    overrides = [f"method={method}", "backbone=relworld", f"dataset={dataset}", f"dataset.root={root}",
                 f"seed={train_seed}", "trainer.progress=false", "trainer.sample_at_end=false",
                 "trainer.report_to=[]", "trainer.sample_every=null", "trainer.checkpoint_every=100000", *extra]
    if s.model:
        overrides.append(f"backbone.pretrained={s.model}")
    cfg = compose_run(*overrides)
    model = weights_digest(Path(resolve_pretrained(cfg.backbone)))
    key = hashlib.sha256(" ".join([*overrides, model]).encode()).hexdigest()[:8]
    run_dir = run_dir.with_name(f"{run_dir.name}-{key}")
    if (run_dir / "export" / "relgen.json").exists() and (run_dir / "summary.json").exists():
        return run_dir, float(json.loads((run_dir / "summary.json").read_text())["train_seconds"])
    shutil.rmtree(run_dir, ignore_errors=True)
    run_training(cfg, str(run_dir))
    return run_dir, float(json.loads((run_dir / "summary.json").read_text())["train_seconds"])


# --------------------------------------------------------------------------------------------
# Rendering and reading
# --------------------------------------------------------------------------------------------


def cache_folder(out: Path) -> Path:
    """Where a benchmark run under ``out`` keeps the harness's image cache."""
    return out / "work" / "eval-cache"


def eval_prompt(p: Prompt, spec: rw.WorldSpec) -> EvalPrompt:
    """The harness's prompt for ``p``: its objects and relation, which the relworld metric reads."""
    return relworld_prompt(p.a, p.relation, p.b, spec, text=p.text)


def render_prompts(prompts: list[Prompt], texts: list[str], run: Optional[Path], options: dict, s: Settings,
                   cache_dir: Path, spec: Optional[rw.WorldSpec] = None, shared: Optional[dict] = None,
                   scheduler: Optional[str] = None) -> list[list[Sample]]:
    """The samples of every prompt (image i: seed ``s.seed + i``), rendered as ``texts`` by the base
    model (``run`` None) or a run with generation ``options``, through the evaluation harness
    (:func:`relgen.evaluate.harness.generate_samples`; images cached under ``cache_dir``).

    ``shared`` keeps loaded runs and pipelines between calls (one backbone per run);
    ``scheduler`` names the sampler (``None``: the backbone's).
    """
    import relgen
    from relgen.evaluate import harness

    shared = {} if shared is None else shared
    if run is None:
        if "base" not in shared:
            shared["base"] = harness.base_condition(backbone_config(s.model))
        condition = shared["base"]
    else:
        loaded = shared.setdefault("runs", {})
        if run not in loaded:
            loaded[run] = relgen.load(run)
        condition = harness.run_condition(loaded[run], options=options)
    seeds = list(range(s.seed, s.seed + s.samples))
    sampler = {"steps": s.steps, "guidance": s.guidance, "scheduler": scheduler}  # None: the backbone's
    samples = harness.generate_samples(condition, [eval_prompt(p, spec or rw.WorldSpec()) for p in prompts], seeds,
                                       sampler, cache_dir, texts=texts, options=dict(options),
                                       batch_size=s.batch_size, pipelines=shared.setdefault("pipelines", {}))
    return [samples[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]


def token_of(run: Optional[Path]) -> str:
    if run is None:
        return "<R>"
    meta = json.loads((run / "export" / "relgen.json").read_text())
    return meta.get("method_config", {}).get("placeholder_token", "<R>")


def render_task(task: TaskResult, spec: rw.WorldSpec, s: Settings,
                prompt_groups: Optional[list[tuple[list[int], dict[str, list[Optional[Path]]]]]] = None,
                cache_dir: Optional[Path] = None) -> None:
    """Render and read every condition of ``task`` for every training seed.

    Images come from the evaluation harness (:func:`render_prompts`; cached under ``cache_dir``,
    by default a temporary folder removed afterwards), readings from its ``relworld`` metric in
    the strict and the colour reading (:func:`relworld_readings`).

    ``prompt_groups`` lets prompts be rendered by different runs of one condition (RRNet has one
    network per biased pair): ``[(prompt indices, {condition name: runs per training seed})]``.
    """
    import tempfile

    metrics = relworld_readings(spec=spec)
    shared: dict = {}
    with tempfile.TemporaryDirectory(prefix="relgen-bench-") as tmp:
        folder = Path(cache_dir) if cache_dir is not None else Path(tmp)
        for cond in task.conditions:
            per_seed_images, per_seed_readings = [], {k: [] for k in metrics}
            for ts in range(len(cond.runs)):
                rows: list[Optional[list[Sample]]] = [None] * len(task.prompts)
                groups = prompt_groups or [(list(range(len(task.prompts))), {})]
                for indices, runs_by_cond in groups:
                    run = runs_by_cond.get(cond.name, cond.runs)[ts]
                    texts = [cond.text(task.prompts[i], spec, token_of(run)) for i in indices]
                    rendered = render_prompts([task.prompts[i] for i in indices], texts, run, cond.options, s, folder,
                                              spec, shared)
                    for i, row in zip(indices, rendered):
                        rows[i] = row
                per_seed_images.append([[sample.image for sample in row] for row in rows])
                for name, metric in metrics.items():
                    per_seed_readings[name].append([metric.read(row) for row in rows])
            task.images[cond.name] = per_seed_images
            task.readings[cond.name] = per_seed_readings


# --------------------------------------------------------------------------------------------
# Outcomes, estimates and comparisons
# --------------------------------------------------------------------------------------------


#: The readings, as the papers report them: ``colour`` -- relation accuracy with the named objects
#: found by their colours (unique in every relworld prompt; the papers' relation reading);
#: ``strict`` -- each object found by colour and shape (object accuracy, RRNet's OGA); ``both``
#: -- the relation right by colour and both objects right by colour and shape.
READINGS = ("colour", "strict", "both")


def image_flags(task: TaskResult, cond: str, reading: str) -> list[list[list[tuple[bool, bool]]]]:
    """``(relation right, both objects present)`` per image in ``reading`` (:data:`READINGS`),
    indexed [training seed][prompt][seed]."""
    if reading in ("colour", "strict"):
        return [[[(r.relation_ok, r.both_present) for r in row] for row in rows]
                for rows in task.readings[cond][reading]]
    if reading != "both":
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    return [[[(c.relation_ok and s.both_present, s.both_present) for c, s in zip(c_row, s_row)]
             for c_row, s_row in zip(c_rows, s_rows)]
            for c_rows, s_rows in zip(task.readings[cond]["colour"], task.readings[cond]["strict"])]


def outcomes(task: TaskResult, cond: str, metric: str, reading: str = "strict") -> tuple[list[float], list[int]]:
    """Per-image (or per seed-pair) outcomes of one condition, pooled over training seeds, and the
    cluster of each, in a fixed order shared by every condition of the task.

    Metrics: ``relation`` (relation accuracy), ``object`` (both objects present), ``direction``
    (swapped tasks: both prompts of a pair right at the same seed), ``unseen_relation`` (swapped
    tasks: relation accuracy of the unseen direction), or a key of :attr:`TaskResult.extra`
    (scores per image). The cluster is the prompt, or on a task with :attr:`TaskResult.units`
    (one trained network per group of prompts) the unit.
    """
    unit = {i: k for k, (_, indices) in enumerate(task.units) for i in indices}
    values, clusters = [], []
    if metric in ("relation", "object", "unseen_relation"):
        for seed_rows in image_flags(task, cond, reading):
            for i, row in enumerate(seed_rows):
                if metric == "unseen_relation" and (not task.swapped or i % 2):
                    continue
                for rel, obj in row:
                    values.append(float(rel if metric != "object" else obj))
                    clusters.append(unit.get(i, i))
        return values, clusters
    if metric == "direction":
        for seed_rows in image_flags(task, cond, reading):
            for j in range(0, len(seed_rows), 2):
                for x, y in zip(seed_rows[j], seed_rows[j + 1]):
                    values.append(float(x[0] and y[0]))
                    clusters.append(unit.get(j, j // 2))
        return values, clusters
    for seed_rows in task.extra[f"{cond}/{metric}"]:
        for i, row in enumerate(seed_rows):
            values += [float(v) for v in row]
            clusters += [unit.get(i, i)] * len(row)
    return values, clusters


def estimate(task: TaskResult, cond: str, metric: str, reading: str = "strict") -> stats.Estimate:
    values, clusters = outcomes(task, cond, metric, reading)
    return stats.summarize(values, clusters, binary=True)


def per_train_seed(task: TaskResult, cond: str, metric: str, reading: str = "strict") -> list[float]:
    """The metric separately for each training seed (their spread), or for each unit of a task
    with :attr:`TaskResult.units`."""
    values, clusters = outcomes(task, cond, metric, reading)
    if not values:
        return []
    if task.units:
        return [float(np.mean([v for v, c in zip(values, clusters) if c == k])) for k in range(len(task.units))]
    n = len(task.conditions[[c.name for c in task.conditions].index(cond)].runs)
    chunk = len(values) // n
    return [float(np.mean(values[k * chunk:(k + 1) * chunk])) for k in range(n)]


def paired(task: TaskResult, method: str, baseline: str, metric: str, reading: str = "strict") -> dict:
    """``method - baseline`` on the same prompts and seeds: a claim entry (paired cluster
    bootstrap interval, McNemar's exact test). A baseline with fewer training seeds (the base
    model has one) is repeated to pair with each of the method's seeds."""
    m, clusters = outcomes(task, method, metric, reading)
    b, b_clusters = outcomes(task, baseline, metric, reading)
    if len(b) != len(m):
        reps = len(m) // len(b)
        b, b_clusters = b * reps, b_clusters * reps
    assert b_clusters == clusters
    return stats.claim(f"{reading}_{metric}_accuracy" if metric in ("relation", "object", "direction")
                       else f"{reading}_{metric}", m, b, clusters, binary=True)


# --------------------------------------------------------------------------------------------
# Identity: an object of one colour, prompted by its class (its shape alone)
# --------------------------------------------------------------------------------------------


def identity_object(s: Settings, spec: rw.WorldSpec) -> tuple[str, str]:
    """``(shape, colour)`` of ``Settings.identity`` ("cyan cross")."""
    from relgen.errors import ConfigError

    words = s.identity.split()
    if len(words) != 2 or words[0] not in spec.colours or words[1] not in spec.shapes:
        raise ConfigError(f"identity '{s.identity}': write it as '<colour> <shape>' with a colour of "
                          f"{', '.join(spec.colours)} and a shape of {', '.join(spec.shapes)}")
    return words[1], words[0]


def identity_kept(readings: Sequence[Reading], colour: str) -> list[bool]:
    """Per reading of a class-only prompt ("a cross ..."), whether the prompted shape was found
    and has the identity's ``colour``."""
    return [r.a is not None and r.a.colour == colour for r in readings]


def identity_ceiling(spec: rw.WorldSpec, identity: tuple[str, str], relation: str, partners: Sequence[tuple[str, str]],
                     vae, seed: int, n: int = 64) -> dict[str, stats.Estimate]:
    """Ground-truth scenes "identity <relation> partner" through ``vae``, read as the task reads
    generated images (A by its shape alone): how often the strict reading keeps the identity and
    the colour reading finds the relation. The most any condition can score."""
    rng = np.random.default_rng([seed, 61])
    scenes = [rw.sample_scene(rng, spec, relation, identity, partners[i % len(partners)]) for i in range(n)]
    images = vae_roundtrip(vae, np.stack([sc.render()[0] for sc in scenes]))
    det = readers(spec)
    kept, related = [], []
    for img, sc in zip(images, scenes):
        b = (sc.objects[1].shape, sc.objects[1].colour)
        kept += identity_kept([det["strict"].read(img, (identity[0], None), relation, b)], identity[1])
        related.append(det["colour"].read(img, (identity[0], None), relation, b).relation_ok)
    return {"identity": stats.wilson_rate(kept), "relation": stats.wilson_rate(related)}


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


def _runs(method: str, dataset: str, data: Path, tag: str, s: Settings, out: Path, extra: list[str],
          task: TaskResult, label: str) -> list[Path]:
    runs = []
    for ts in s.train_seeds:
        run, seconds = train(method, dataset, data, out / "work" / "runs" / f"{tag}-{s.seed}-{ts}", s, ts, extra)
        runs.append(run)
        task.train_seconds.setdefault(label, []).append(seconds)
    return runs


def task_inversion(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    relation = s.inversion_relation
    train_pairs, eval_pairs = (split_inside_pairs(spec, s.inversion_containers, s.seed) if relation == "inside"
                               else split_unordered_pairs(spec, s.seed))
    data = rw.write_world_reversion(out / "work" / "data" / f"inversion-{s.seed}", spec, seed=s.seed,
                                    relation=relation, num_images=s.exemplars, pairs=train_pairs)
    task = TaskResult("inversion", inversion_prompts(spec, s.prompts, s.seed, eval_pairs, relation), [])
    task.conditions = [c for c in (Condition("base, relation written", "written"),
                                   Condition("base, relation omitted", "omitted")) if c.name not in s.skip]
    for method, label in (("textual_inversion", "textual inversion"), ("reversion", "ReVersion")):
        if label in s.skip:
            continue
        runs = _runs(method, "reversion_folder", data, method, s, out, [f"method.max_steps={s.inversion_steps}"],
                     task, label)
        task.conditions.append(Condition(label, "relation_token", runs))
    if relation == "inside":
        task.notes.append(f"Exemplars from the (inner, outer) shape pairs {train_pairs}; scored on {eval_pairs}.")
    else:
        task.notes.append(f"Exemplars from the shape pairs {sorted({tuple(sorted(p)) for p in train_pairs})}; "
                          f"scored on {sorted({tuple(sorted(p)) for p in eval_pairs})} (unordered, both orders).")
    render_task(task, spec, s, cache_dir=cache_folder(out))
    return task


def osp_prompts(data: Path, triple: tuple[str, str, str]) -> list[Prompt]:
    """The object-swapped prompt pair an RRNet folder trains on: ``[ARB, BRA]`` as written in its
    ``index.json`` ("a cyan square is above a red circle", "a red circle is above a cyan square")."""
    index = json.loads(next(Path(data).glob("*/index.json")).read_text())
    sa, rel, sb = triple
    arb, bra = index["ARB"], index["BRA"]
    ca, cb = arb.split()[1], arb.split()[-2]  # "a <colour> <shape> is <phrase> a <colour> <shape>"
    return [Prompt((sa, ca), rel, (sb, cb), arb), Prompt((sb, cb), rel, (sa, ca), bra)]


def rrnet_networks(spec: rw.WorldSpec, s: Settings, out: Path, task: TaskResult) -> list[dict]:
    """One RRNet per biased pair and training seed, each trained on its own object-swapped pair
    (the unseen direction of the pair, colours drawn from the training seed), as RRNet's paper
    trains one network per OSP. Returns per network its triple, data folder, run and OSP prompts."""
    nets = []
    for index, pair in enumerate(spec.biased):
        triple = (pair.second, pair.relation, pair.first)  # the direction pretraining never shows
        for ts in s.train_seeds:
            data = rw.write_world_rrnet(out / "work" / "data" / f"rrnet-{index}-{s.seed}-{ts}", spec,
                                        seed=s.seed + 100 * ts + index, triples=[triple],
                                        images_per_folder=s.rrnet_images)
            run, seconds = train("rrnet", "rrnet_folder", data, out / "work" / "runs" / f"rrnet-{index}-{s.seed}-{ts}",
                                 s, ts, [f"method.max_steps={s.rrnet_steps}", f"method.edit_rows={s.rrnet_rows}"])
            task.train_seconds.setdefault(f"RRNet {' '.join(triple)}", []).append(seconds)
            nets.append({"triple": triple, "pair": pair, "train_seed": ts, "data": data, "run": run,
                         "osp": osp_prompts(data, triple)})
    return nets


def _lambda_conditions(s: Settings) -> list[Condition]:
    # every column is drawn through the trained network with its scale set, so λ = 0 is the base
    # model under exactly the sampler and prompt of the other columns
    return [Condition(lambda_label(lam), "written", [None], {"scale": lam}) for lam in s.scales]


def lambda_label(lam: float) -> str:
    """The column name of RRNet at scale ``lam``."""
    return f"RRNet λ = {lam:g}"


def task_rectification(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    """RRNet on its paper's protocol: each network renders its own training OSP at new seeds
    (``s.osp_samples`` per prompt) at every λ; the prompts of all networks are pooled, one
    cluster per network."""
    task = TaskResult("rectification", [], _lambda_conditions(s), swapped=True)
    groups = []
    for net in rrnet_networks(spec, s, out, task):
        start = len(task.prompts)
        task.prompts += net["osp"]
        groups.append((list(range(start, start + 2)), {c.name: [net["run"]] for c in task.conditions}))
        task.units.append((f"{' '.join(net['triple'])}, seed {net['train_seed']}", list(range(start, start + 2))))
    task.notes.append(f"One network per biased pair and training seed ({len(groups)} networks), each scored on the "
                      f"object-swapped pair it was trained on, {s.osp_samples} seeds per prompt.")
    render_task(task, spec, replace(s, samples=s.osp_samples), groups, cache_dir=cache_folder(out))
    return task


def task_generalisation(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    """The secondary row: the same networks on object-swapped pairs of other colours (RRNet's
    graph nodes are the shape and relation words, so its edit is the same for every colour)."""
    task = TaskResult("rectification_generalisation", [], _lambda_conditions(s), swapped=True)
    groups = []
    per_net = max(1, s.generalisation_pairs)
    for k, net in enumerate(rrnet_networks(spec, s, out, TaskResult("", [], []))):
        osp = net["osp"]
        colours = (osp[0].a[1], osp[0].b[1])
        group = rectification_prompts(spec, net["pair"], per_net, s.seed + k, colours)
        start = len(task.prompts)
        task.prompts += group
        groups.append((list(range(start, start + len(group))), {c.name: [net["run"]] for c in task.conditions}))
        task.units.append((f"{' '.join(net['triple'])}, seed {net['train_seed']}",
                           list(range(start, start + len(group)))))
    task.notes.append(f"{per_net} colour pairs per network other than its training pair.")
    render_task(task, spec, s, groups, cache_dir=cache_folder(out))
    return task


def write_identity_images(root: Path, spec: rw.WorldSpec, identity: tuple[str, str], n: int, seed: int) -> Path:
    """A ReVersion-layout folder of the identity ``(shape, colour)`` alone (random sizes and
    positions) with the templates ``"a {}"``, ``"a photo of a {}"``, ``"{}"``: a
    textual-inversion dataset of the identity."""
    from relgen.data import shapes

    def write(tmp: Path) -> None:
        text = {}
        for i in range(n):
            scene = rw.sample_single(np.random.default_rng([seed, 53, i]), spec, identity)
            shapes._save_png(scene.render()[0], tmp / f"{i}.png")
            text[f"{i}.png"] = ["a {}", "a photo of a {}", "{}"]
        (tmp / "text.json").write_text(json.dumps(text, indent=4) + "\n", encoding="utf-8")

    args = dict(world=rw.WORLD_VERSION, spec=spec.to_dict(), identity=list(identity), n=n, seed=seed)
    return shapes._write_atomically(root, "relworld_identity", args, write)


def task_customisation(spec: rw.WorldSpec, s: Settings, out: Path) -> TaskResult:
    shape, colour = identity_object(s, spec)
    relation = s.customisation_relation
    phrase = rw.RELATIONS[relation].phrase
    rng = np.random.default_rng([s.seed, 47])
    objects = [(sh, c) for sh in spec.shapes for c in spec.colours if c != colour and sh != shape]
    order = rng.permutation(len(objects))
    partner = objects[int(order[0])]  # the training items' other object; every other one is scored
    data = rw.write_world_dreamrelation(out / "work" / "data" / f"customisation-{s.seed}", spec, seed=s.seed,
                                        relation=relation, num_items=s.identity_items, plain_identity=(shape, colour),
                                        others=[partner])
    partners = [objects[int(k)] for k in order[1:1 + s.prompts]]
    prompts = [Prompt((shape, None), relation, b, f"a {shape} is {phrase} a {rw.object_name(b)}") for b in partners]
    task = TaskResult("customisation", prompts, [c for c in (
        Condition("base", "written"),
        Condition("base, identity named", "entity_named", entity=f"{colour} {shape}")) if c.name not in s.skip])
    task.notes.append(f"Identity: a {colour} {shape}, prompted as \"a {shape}\". Training items: the identity "
                      f"{relation.replace('_', ' ')} a {rw.object_name(partner)}; scored on the {len(prompts)} other "
                      f"plain objects of other shapes and colours.")
    # as conf/experiment/relationbooth_relworld.yaml: image branch off, no negative prompt
    common = [f"method.max_steps={s.identity_steps}", f"method.lr={s.identity_lr}", "method.scale=0",
              "method.negative_prompt=''", "method.cal_layer_rule=relative"]
    if "textual inversion (identity)" not in s.skip:
        ti_data = write_identity_images(out / "work" / "data" / f"identity-{s.seed}", spec, (shape, colour),
                                        s.identity_images, s.seed)
        runs = _runs("textual_inversion", "reversion_folder", ti_data, "ti-identity", s, out,
                     [f"method.max_steps={s.inversion_steps}"], task, "textual inversion (identity)")
        task.conditions.append(Condition("textual inversion (identity)", "entity_token", runs))
    for label, extra, tag in (("RelationBooth", [], "kp"), ("RelationBooth without keypoint loss",
                                                             ["method.kp_weight=0"], "nokp")):
        if label in s.skip:
            continue
        runs = _runs("relationbooth", "dreamrelation_folder", data, f"relationbooth-{tag}", s, out, common + extra,
                     task, label)
        task.conditions.append(Condition(label, "written", runs, {"scale": 0.0}))
    render_task(task, spec, s, cache_dir=cache_folder(out))
    ceiling = identity_ceiling(spec, (shape, colour), relation, [p.b for p in prompts],
                               load_pipeline(s.model)[0].vae, s.seed)
    task.ceiling = {k: v.as_dict() for k, v in ceiling.items()}
    task.notes.append("Ground truth through the VAE, read the same way (Wilson 95 %): " + ", ".join(
        f"{'identity kept' if k == 'identity' else k} {100 * v.value:.1f} [{100 * v.low:.1f}, {100 * v.high:.1f}]"
        for k, v in ceiling.items()) + ".")
    for cond in task.conditions:
        task.extra[f"{cond.name}/identity"] = [[[float(k) for k in identity_kept(readings, colour)]
                                                for readings in rows]
                                               for rows in task.readings[cond.name]["strict"]]
    return task


TASKS: dict[str, Callable[[rw.WorldSpec, Settings, Path], TaskResult]] = {
    "inversion": task_inversion, "rectification": task_rectification,
    "rectification_generalisation": task_generalisation, "customisation": task_customisation}

#: The claims of ``results.json``: name -> (task, method, baseline, metric, reading). Relation and
#: direction in the papers' reading (objects found by colour), object accuracy by colour and shape.
CLAIMS: dict[str, tuple[str, str, str, str, str]] = {
    "reversion_vs_textual_inversion": ("inversion", "ReVersion", "textual inversion", "relation", "colour"),
    "rrnet_vs_lambda0": ("rectification", "RRNet λ = {chosen}", "RRNet λ = 0", "direction", "colour"),
    "rrnet_lambda1_vs_lambda0": ("rectification", "RRNet λ = 1", "RRNet λ = 0", "direction", "colour"),
    "relationbooth_vs_identity_baseline": ("customisation", "RelationBooth", "textual inversion (identity)",
                                           "identity", "strict"),
    "relationbooth_keypoint_ablation": ("customisation", "RelationBooth", "RelationBooth without keypoint loss",
                                        "relation", "colour"),
}

#: Secondary comparisons reported beside the claims (same form).
COMPARISONS: dict[str, tuple[str, str, str, str, str]] = {
    "reversion_vs_relation_omitted": ("inversion", "ReVersion", "base, relation omitted", "relation", "colour"),
    "textual_inversion_vs_relation_omitted": ("inversion", "textual inversion", "base, relation omitted", "relation",
                                              "colour"),
    "reversion_vs_textual_inversion_both": ("inversion", "ReVersion", "textual inversion", "relation", "both"),
    "rrnet_object_accuracy_vs_lambda0": ("rectification", "RRNet λ = {chosen}", "RRNet λ = 0", "object", "strict"),
    "rrnet_lambda1_object_accuracy_vs_lambda0": ("rectification", "RRNet λ = 1", "RRNet λ = 0", "object", "strict"),
    "rrnet_lambda1_vs_lambda0_both": ("rectification", "RRNet λ = 1", "RRNet λ = 0", "direction", "both"),
    "rrnet_generalisation_lambda1_vs_lambda0": ("rectification_generalisation", "RRNet λ = 1", "RRNet λ = 0",
                                                "direction", "colour"),
    "rrnet_generalisation_vs_lambda0": ("rectification_generalisation", "RRNet λ = {chosen}", "RRNet λ = 0",
                                        "direction", "colour"),
    "relationbooth_relation_vs_base": ("customisation", "RelationBooth", "base", "relation", "colour"),
    "relationbooth_identity_vs_base": ("customisation", "RelationBooth", "base", "identity", "strict"),
    "relation_written_vs_omitted": ("inversion", "base, relation written", "base, relation omitted", "relation",
                                    "colour"),
    "identity_named_vs_class": ("customisation", "base, identity named", "base", "identity", "strict"),
    "textual_inversion_identity_vs_base": ("customisation", "textual inversion (identity)", "base", "identity",
                                           "strict"),
}


def resolve(entry: tuple[str, ...], s: Settings) -> tuple[str, str, str, str, str]:
    """``(task, method, baseline, metric, reading)`` of a claim entry (reading ``strict`` when
    the entry names none), with the chosen λ filled in."""
    task, method, baseline, metric, reading = entry if len(entry) == 5 else (*entry, "strict")
    return task, method.format(chosen=f"{s.chosen_scale:g}"), baseline, metric, reading


def claims(tasks: dict[str, TaskResult], s: Settings, table: dict = CLAIMS) -> dict[str, dict]:
    """Each claim (or comparison) whose task and conditions ran: a paired comparison in its
    reading (:func:`paired`), with the per-training-seed (or per-network) effects."""
    out = {}
    for name, entry in table.items():
        task, method, baseline, metric, reading = resolve(entry, s)
        t = tasks.get(task)
        if t is None or {method, baseline} - {c.name for c in t.conditions}:
            continue
        c = paired(t, method, baseline, metric, reading)
        m_seeds, b_seeds = per_train_seed(t, method, metric, reading), per_train_seed(t, baseline, metric, reading)
        if len(b_seeds) != len(m_seeds):
            b_seeds = b_seeds * len(m_seeds)
        c.update(task=task, method_condition=method, baseline_condition=baseline, reading=reading,
                 effects_per_train_seed=[x - y for x, y in zip(m_seeds, b_seeds)])
        out[name] = c
    return out


#: The world each task is measured in (:data:`relgen.relworld.world.WORLDS`).
TASK_WORLDS: dict[str, str] = {"inversion": "3", "rectification": "2", "rectification_generalisation": "2",
                               "customisation": "3"}

#: The shipped model of each world (``None``: the ``relworld`` backbone's own weights).
WORLD_MODELS: dict[str, Optional[str]] = {"2": None, "3": "pkg://relgen.relworld/weights3"}


def task_settings(s: Settings, name: str) -> tuple[rw.WorldSpec, Settings]:
    """The world of task ``name`` and ``s`` with that world's model (unless ``s.model`` names one)."""
    world = TASK_WORLDS[name]
    return rw.world_spec(world), (s if s.model else replace(s, model=WORLD_MODELS[world]))


def run(s: Settings, names: Sequence[str], out: Path) -> dict[str, TaskResult]:
    return {name: TASKS[name](*task_settings(s, name), out) for name in names}


# --------------------------------------------------------------------------------------------
# Probes of the model itself
# --------------------------------------------------------------------------------------------


def model_probes(s: Settings, rows: Sequence[str] = ("eot", "eot_and_padding", "all"), num_scenes: int = 96,
                 oracle_steps: int = 150) -> dict[str, Any]:
    """The probes that say whether a method *can* work on the model: the diffusion classifier,
    the EOT row's polarity probe, the text encoder's caption margins, cross-attention shares,
    the free-delta oracle on each kind of rows, and the ``inside`` VAE ceiling of the strict
    reading."""
    from diffusers import DDPMScheduler

    from relgen.relworld import probes

    spec = rw.WorldSpec()
    backbone, pipe = load_pipeline(s.model)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    out: dict[str, Any] = {}
    t0 = time.time()
    out["diffusion_classifier"] = probes.diffusion_classifier(pipe.unet, pipe.text_encoder, pipe.tokenizer,
                                                              pipe.vae, sched, spec, num_scenes=num_scenes,
                                                              seed=s.seed).to_dict()
    out["eot_polarity"] = plain(probes.eot_polarity_probe(pipe.text_encoder, pipe.tokenizer, spec, seed=s.seed))
    out["caption_margins"] = probes.caption_margins(pipe.text_encoder, pipe.tokenizer, spec)
    scenes = probes.probe_scenes(spec, 32, seed=s.seed)
    out["attention_shares"] = probes.attention_shares(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.vae,
                                                      sched, scenes)
    out["free_delta_oracle"] = {r: probes.free_delta_oracle(pipe, spec, rows=r, steps=oracle_steps, seeds=s.samples,
                                                            num_inference_steps=s.steps, seed=s.seed).to_dict()
                                for r in rows}
    # the strict reading's ceiling on the held-out relation: ground truth through the VAE
    det = readers(spec)["strict"]
    rng = np.random.default_rng([s.seed, 59])
    flags = []
    for i in range(64):
        scene = rw.sample_scene(rng, spec, spec.heldout_relation)
        a, b = ((o.shape, o.colour) for o in scene.objects)
        img = vae_roundtrip(pipe.vae, scene.render()[0][None])[0]
        flags.append(det.read(img, a, spec.heldout_relation, b).relation_ok)
    out["inside_vae_ceiling_strict"] = stats.wilson_rate(flags).as_dict()
    out["seconds"] = time.time() - t0
    return out


__all__ = ["CLAIMS", "COMPARISONS", "Condition", "mark_verdict", "Prompt", "Settings", "TASKS", "TaskResult",
           "backbone_config", "cache_folder", "claims", "estimate", "eval_prompt", "load_pipeline", "model_probes",
           "outcomes", "paired", "plain", "readers", "identity_ceiling", "identity_kept", "render_prompts",
           "render_task", "run", "split_unordered_pairs", "task_settings", "TASK_WORLDS", "token_of", "train",
           "vae_roundtrip", "WORLD_MODELS"]
