"""The relworld benchmark: generate, detect exactly, and report with confidence intervals.

    python benchmarks/relworld/benchmark.py                         # the shipped relworld model
    python benchmarks/relworld/benchmark.py --model /path/to/diffusers-folder --samples 8
    python benchmarks/relworld/benchmark.py --world 3 --out benchmarks/relworld/results/base_relworld3

Base-model suites (every prompt rendered with seeds ``seed .. seed + samples - 1``):

* ``seen``: canonical prompts "a A r a B" for each relation named in pretraining captions,
  ``--pairs`` object pairs each, in the direction pretraining shows;
* ``swapped``: object-swapped prompt pairs ("a A r a B" / "a B r a A", same seeds) of unbiased
  shape pairs — direction accuracy;
* ``biased``: the same for the biased pairs (pretraining shows only one direction);
* ``heldout``: prompts of the held-out relation (never named in pretraining captions; world 3
  names every relation, so there ``inside`` is one of the ``seen`` relations);
* ``vae_ceiling``: no generation — ground-truth renders of the ``seen`` prompts passed through
  the model's VAE (encode, decode): what the detector can find at best in decoded images.

Images are drawn and read through the evaluation harness (:func:`relgen.relworld.bench.render_prompts`
and the ``relworld`` metric, the exact detector of :mod:`relgen.relworld.detector`; images cached
under ``--out/work/eval-cache``): relation accuracy, object accuracy (both objects present) and
direction accuracy, each with a 95 % Wilson interval. Writes ``report.md``, ``results.json`` and
one image grid per suite (rows = prompts, columns = seeds) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from relgen.relworld.metric import relworld_readings
from relgen.relworld import world as rw
from relgen.relworld.bench import (WORLD_MODELS, Prompt, Settings, cache_folder, load_pipeline, plain, render_prompts,
                                   vae_roundtrip)
from relgen.relworld.detector import (
    Detector,
    Reading,
    direction_accuracy,
    object_accuracy,
    relation_accuracy,
)

HERE = Path(__file__).resolve().parent


@dataclass
class Suite:
    name: str
    prompts: list[Prompt]
    swapped: bool = False  # prompts come in (ARB, BRA) pairs
    readings: list[list[Reading]] = field(default_factory=list)
    colour_readings: list[list[Reading]] = field(default_factory=list)  # objects found by colour alone
    images: list[list] = field(default_factory=list)


def _pair_objects(rng: np.random.Generator, spec: rw.WorldSpec, shapes: tuple[str, str]):
    ca, cb = rng.choice(len(spec.colours), size=2, replace=False)
    return (shapes[0], spec.colours[ca]), (shapes[1], spec.colours[cb])


def build_suites(spec: rw.WorldSpec, pairs: int, seed: int = 0) -> list[Suite]:
    """The base-model suites (deterministic for a seed)."""
    rng = np.random.default_rng([seed, 17])
    biased_shapes = {frozenset((p.first, p.second)) for p in spec.biased}
    free_shapes = [(x, y) for i, x in enumerate(spec.shapes) for y in spec.shapes[i + 1:]
                   if frozenset((x, y)) not in biased_shapes]

    def make(a, relation, b) -> Prompt:
        return Prompt(a, relation, b, rw.prompt(a, relation, b, spec))

    seen = []
    for relation in spec.captioned_relations:
        for _ in range(pairs):
            sa, sb = free_shapes[int(rng.integers(len(free_shapes)))]
            a, b = _pair_objects(rng, spec, (sa, sb) if rng.random() < 0.5 else (sb, sa))
            seen.append(make(a, relation, b))
    swapped = []
    for relation in ("above", "left_of"):
        for _ in range(max(1, pairs // 2)):
            a, b = _pair_objects(rng, spec, free_shapes[int(rng.integers(len(free_shapes)))])
            swapped += [make(a, relation, b), make(b, relation, a)]
    biased = []
    for pair in spec.biased:
        for _ in range(max(1, pairs // 2)):
            a, b = _pair_objects(rng, spec, (pair.first, pair.second))
            biased += [make(a, pair.relation, b), make(b, pair.relation, a)]
    heldout = []
    if spec.heldout_relation:
        for _ in range(pairs):
            sa, sb = free_shapes[int(rng.integers(len(free_shapes)))]
            a, b = _pair_objects(rng, spec, (sa, sb))
            heldout.append(make(a, spec.heldout_relation, b))
    return [Suite("seen", seen), Suite("swapped", swapped, swapped=True), Suite("biased", biased, swapped=True),
            Suite("heldout", heldout), Suite("vae_ceiling", list(seen))]


def run_suite(suite: Suite, spec: rw.WorldSpec, s: Settings, scheduler: str | None, cache_dir: Path) -> None:
    """Render every prompt ``s.samples`` times and read each image, through the evaluation harness
    (:func:`relgen.relworld.bench.render_prompts`; its ``relworld`` metric, strict and colour)."""
    rows = render_prompts(suite.prompts, [p.text for p in suite.prompts], None, {}, s, cache_dir, spec,
                          scheduler=scheduler)
    suite.images = [[sample.image for sample in row] for row in rows]
    metrics = relworld_readings(spec=spec)
    suite.readings = [metrics["strict"].read(row) for row in rows]
    suite.colour_readings = [metrics["colour"].read(row) for row in rows]


def read_all(suite: Suite, detector: Detector) -> None:
    """Strict readings (colour and shape) and colour readings of every image of ``suite`` (the
    VAE ceiling's ground-truth renders, which nothing generates)."""
    loose = Detector(detector.spec, replace(detector.config, match_shape=False))
    for name, det in (("readings", detector), ("colour_readings", loose)):
        setattr(suite, name, [[det.read(np.asarray(img), p.a, p.relation, p.b) for img in row]
                              for p, row in zip(suite.prompts, suite.images)])


def run_vae_ceiling(suite: Suite, backbone, spec: rw.WorldSpec, detector: Detector, samples: int,
                    seed: int) -> None:
    """Ground-truth scenes of each prompt, through the VAE (posterior mean), then detected."""
    from PIL import Image

    suite.images = []
    for k, p in enumerate(suite.prompts):
        scenes = [rw.sample_scene(np.random.default_rng([seed, k, i]), spec, p.relation, p.a, p.b)
                  for i in range(samples)]
        images = vae_roundtrip(backbone.vae, np.stack([s.render()[0] for s in scenes]))
        suite.images.append([Image.fromarray(im) for im in images])
    read_all(suite, detector)


def summarize(suite: Suite) -> dict:
    flat = [r for row in suite.readings for r in row]
    out = {"prompts": len(suite.prompts), "images": len(flat),
           "relation_accuracy": relation_accuracy(flat), "object_accuracy": object_accuracy(flat)}
    if suite.colour_readings:
        loose = [r for row in suite.colour_readings for r in row]
        out["relation_accuracy_colour"] = relation_accuracy(loose)
        out["object_accuracy_colour"] = object_accuracy(loose)
    for key, readings in (("direction_accuracy", suite.readings), ("direction_accuracy_colour", suite.colour_readings)):
        if suite.swapped and readings:
            pairs = [(x, y) for row_ab, row_ba in zip(readings[0::2], readings[1::2]) for x, y in zip(row_ab, row_ba)]
            out[key] = direction_accuracy(pairs)
    by_relation = {}
    for p, row in zip(suite.prompts, suite.readings):
        by_relation.setdefault(p.relation, []).extend(row)
    out["by_relation"] = {k: relation_accuracy(v) for k, v in by_relation.items()}
    return out


def write_report(out: Path, suites: list[Suite], summaries: dict, meta: dict) -> Path:
    from relgen.grid import labelled_grid, seed_labels

    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# relworld benchmark — {meta['model']}", "",
             f"{meta['samples']} samples per prompt (seeds {meta['seed']}..{meta['seed'] + meta['samples'] - 1}), "
             f"{meta['steps']} steps, guidance {meta['guidance']}, {meta['scheduler']} scheduler. "
             f"Rates in %, with 95 % Wilson intervals. *strict*: each object found by colour and shape; "
             f"*colour*: by colour alone. Wall time {meta['wall_s']:.0f} s.", "",
             "| suite | prompts | images | relation acc. | object acc. | direction acc. | relation acc. (colour) | "
             "object acc. (colour) | direction acc. (colour) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in suites:
        m = summaries[s.name]
        lines.append(f"| {s.name} | {m['prompts']} | {m['images']} | {m['relation_accuracy']} | "
                     f"{m['object_accuracy']} | {m.get('direction_accuracy', '—')} | "
                     f"{m.get('relation_accuracy_colour', '—')} | {m.get('object_accuracy_colour', '—')} | "
                     f"{m.get('direction_accuracy_colour', '—')} |")
    lines += ["", "Relation accuracy per relation:", "", "| suite | relation | accuracy |", "|---|---|---|"]
    for s in suites:
        for rel, r in summaries[s.name]["by_relation"].items():
            lines.append(f"| {s.name} | {rel} | {r} |")
    lines.append("")
    for s in suites:
        grid = out / f"grid_{s.name}.png"
        labelled_grid(s.images, row_labels=[p.text for p in s.prompts],
                      column_labels=seed_labels(meta['seed'], max(len(r) for r in s.images)),
                      title=f"relworld benchmark · {meta['model']} · {s.name}").save(grid)
        lines += [f"## {s.name}", "", "Rows: " + "; ".join(f"`{p.text}`" for p in s.prompts), "",
                  f"![{s.name}]({grid.name})", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")

    (out / "results.json").write_text(json.dumps({"meta": meta, "suites": plain(summaries)}, indent=2))
    return out / "report.md"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="diffusers folder or pkg:// URI (default: the world's shipped model)")
    p.add_argument("--world", default="2", choices=sorted(rw.WORLDS), help="the world whose prompts are drawn")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--pairs", type=int, default=4, help="object pairs per relation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--scheduler", default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--suites", default="seen,swapped,biased,heldout,vae_ceiling")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "base"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    spec = rw.world_spec(args.world)
    args.model = args.model or WORLD_MODELS[args.world]
    backbone, _ = load_pipeline(args.model, args.scheduler)  # the VAE ceiling's VAE and the defaults of the report
    detector = Detector(spec)
    settings = Settings(model=args.model, seed=args.seed, samples=args.samples, steps=args.steps,
                        guidance=args.guidance, batch_size=args.batch_size)
    wanted = args.suites.split(",")
    suites = [s for s in build_suites(spec, args.pairs, args.seed) if s.name in wanted and s.prompts]
    summaries = {}
    for suite in suites:
        if suite.name == "vae_ceiling":
            run_vae_ceiling(suite, backbone, spec, detector, args.samples, args.seed)
        else:
            run_suite(suite, spec, settings, args.scheduler, cache_folder(Path(args.out)))
        summaries[suite.name] = summarize(suite)
        m = summaries[suite.name]
        print(f"{suite.name:8s} relation {m['relation_accuracy']}  object {m['object_accuracy']}"
              + (f"  direction {m['direction_accuracy']}" if "direction_accuracy" in m else "")
              + f"  | colour: relation {m['relation_accuracy_colour']}  object {m['object_accuracy_colour']}"
              + (f"  direction {m['direction_accuracy_colour']}" if "direction_accuracy_colour" in m else ""),
              flush=True)
    meta = {"model": args.model or backbone.cfg.pretrained, "world": args.world, "samples": args.samples, "seed": args.seed,
            "steps": args.steps or backbone.cfg.inference_steps,
            "guidance": args.guidance if args.guidance is not None else backbone.cfg.guidance_scale,
            "scheduler": args.scheduler or backbone.cfg.inference_scheduler, "wall_s": time.time() - t0}
    print(write_report(Path(args.out), suites, summaries, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
