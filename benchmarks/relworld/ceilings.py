"""Ceilings of the relworld tasks, measured before a task is used: can the method's own
parameterization reach the task on this model, and can the reader read it after the VAE?

    python benchmarks/relworld/ceilings.py                    # every ceiling, the methods benchmark's OSPs
    python benchmarks/relworld/ceilings.py --skip-oracle      # the VAE ceilings alone (a minute)

* **RRNet** (the ``rectification`` task): one free delta per prompt on the first EOT row of the
  network's own object-swapped pair, exactly what RRNet's edit can express, optimised directly by
  the denoising loss on ground-truth renders of that prompt
  (:func:`relgen.relworld.probes.free_delta_oracle`), rendered at the benchmark's seeds; for the
  OSP of every biased pair and training seed of ``methods.py``.
* **ReVersion** (the ``inversion`` task, world 3): ground-truth scenes of its relation through
  the model's VAE, read in each reading, for every inner shape. What a single learnt token can
  reach on the model is measured by textual inversion with five times the steps and four times
  the exemplars (``methods.py --tasks inversion --inversion-steps 1500 --exemplars 40 --skip
  ReVersion``; ``results/pilots/``).
* **RelationBooth** (the ``customisation`` task, world 3): ground-truth scenes of the identity in
  the task's relation through the VAE, read as the task reads generated images
  (:func:`relgen.relworld.bench.identity_ceiling`).

A task whose ceiling is below 60 % is not a test of its method. Writes ``ceilings.json`` and
``ceilings.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from relgen import atomic
from relgen.evaluate import stats
from relgen.relworld import bench
from relgen.relworld import world as rw

HERE = Path(__file__).resolve().parent


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it (no machine's absolute path in results)."""
    try:
        return str(path.resolve().relative_to(HERE.parents[1]))
    except ValueError:
        return str(path)


def osp_orders(spec: rw.WorldSpec, s: bench.Settings) -> list[tuple[str, list]]:
    """The object-swapped pair of every network of the ``rectification`` task (the same data
    seeds as :func:`relgen.relworld.bench.rrnet_networks`), as oracle orders."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, pair in enumerate(spec.biased):
            triple = (pair.second, pair.relation, pair.first)
            for ts in s.train_seeds:
                data = rw.write_world_rrnet(Path(tmp) / f"{index}-{ts}", spec, seed=s.seed + 100 * ts + index,
                                            triples=[triple], images_per_folder=s.rrnet_images)
                unseen, seen = bench.osp_prompts(data, triple)
                out.append((f"{' '.join(triple)}, seed {ts}: {unseen.text}",
                            [(unseen.a, unseen.relation, unseen.b), (seen.a, seen.relation, seen.b)]))
    return out


def vae_ceiling(spec: rw.WorldSpec, vae, relation: str, n: int, seed: int) -> dict:
    """Ground-truth scenes of ``relation`` through ``vae``, read in every reading; by inner shape."""
    readers = bench.readers(spec)
    rng = np.random.default_rng([seed, 59])
    flags: dict[str, list] = {"colour": [], "strict": [], "both": []}
    by_shape: dict[str, dict[str, list]] = {}
    for _ in range(n):
        scene = rw.sample_scene(rng, spec, relation)
        a, b = ((o.shape, o.colour) for o in scene.objects)
        img = bench.vae_roundtrip(vae, scene.render()[0][None])[0]
        col, st = readers["colour"].read(img, a, relation, b), readers["strict"].read(img, a, relation, b)
        result = {"colour": col.relation_ok, "strict": st.relation_ok, "both": col.relation_ok and st.both_present}
        for k, v in result.items():
            flags[k].append(v)
            by_shape.setdefault(a[0], {}).setdefault(k, []).append(v)
    return {"all": {k: stats.wilson_rate(v).as_dict() for k, v in flags.items()},
            "by_inner_shape": {sh: {k: stats.wilson_rate(v).as_dict() for k, v in d.items()}
                               for sh, d in sorted(by_shape.items())}}


def pct(d: dict) -> str:
    return f"{100 * d.get('value', d.get('rate')):.1f} [{100 * d['ci95'][0]:.1f}, {100 * d['ci95'][1]:.1f}]"


def markdown(r: dict) -> str:
    lines = ["# relworld task ceilings", "", f"RRNet's on `{r['model']}`; the others name their model. Wilson 95 % "
             "intervals.", ""]
    if r.get("rrnet"):
        lines += ["## RRNet: one free delta per prompt on the first EOT row of its own OSP", "",
                  f"{r['settings']['samples']} seeds per prompt; direction and relation read with the objects found "
                  "by colour, objects by colour and shape.", "",
                  "| OSP | direction (delta) | direction (base) | unseen prompt right | objects (delta) | objects (base) |",
                  "|---|---|---|---|---|---|"]
        for name, o in r["rrnet"]["per_osp"].items():
            lines.append(f"| {name} | {pct(o['direction'])} | {pct(o['base_direction'])} | {pct(o['unseen'])} | "
                         f"{pct(o['objects'])} | {pct(o['base_objects'])} |")
        p = r["rrnet"]["pooled"]
        lines += [f"| **pooled** | **{pct(p['direction'])}** | {pct(p['base_direction'])} | | {pct(p['objects'])} | "
                  f"{pct(p['base_objects'])} |", ""]
    v = r["reversion"]
    lines += [f"## ReVersion: `{v['relation']}` ground truth through the VAE of `{v['model']}`", "",
              "| inner shape | relation (colour) | strict (colour + shape) | both |", "|---|---|---|---|",
              f"| all | {pct(v['all']['colour'])} | {pct(v['all']['strict'])} | {pct(v['all']['both'])} |"]
    for sh, d in v["by_inner_shape"].items():
        lines.append(f"| {sh} | {pct(d['colour'])} | {pct(d['strict'])} | {pct(d['both'])} |")
    c = r["relationbooth"]
    lines += ["", f"## RelationBooth: identity `{c['identity']}` `{c['relation']}` a partner, ground truth through the "
              f"VAE of `{c['model']}`", "",
              "Read as the task reads generated images: the prompted shape found in any colour but the partner's.", "",
              f"Identity kept {pct(c['identity_kept'])}; relation (colour) {pct(c['relation_colour'])}.", "",
              f"Time {r['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-seeds", default="0,1,2")
    p.add_argument("--samples", type=int, default=32, help="seeds per OSP prompt")
    p.add_argument("--oracle-steps", type=int, default=150)
    p.add_argument("--scenes", type=int, default=128, help="ground-truth scenes per VAE ceiling")
    p.add_argument("--skip-oracle", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "ceilings"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog

    from relgen.relworld import probes

    dlog.disable_progress_bar()
    t0 = time.time()
    spec = rw.WorldSpec()
    s = bench.Settings(model=args.model, seed=args.seed, train_seeds=tuple(int(x) for x in args.train_seeds.split(",")))
    backbone, pipe = bench.load_pipeline(args.model)
    result = {"model": args.model or "pkg://relgen.relworld/weights", "settings": {**vars(args), "out": _shown(Path(args.out))},
              "rrnet": None}
    if not args.skip_oracle:
        per, pooled = {}, {}
        for name, orders in osp_orders(spec, s):
            o = probes.free_delta_oracle(pipe, spec, rows="eot", orders=orders, steps=args.oracle_steps,
                                         seeds=args.samples, seed=args.seed, relation_reading="colour",
                                         guidance=backbone.cfg.guidance_scale,
                                         num_inference_steps=backbone.cfg.inference_steps)
            per[name] = o.to_dict()
            for k in ("direction", "base_direction", "objects", "base_objects"):
                rate = getattr(o, k)
                pooled.setdefault(k, [0, 0])
                pooled[k][0] += rate.k
                pooled[k][1] += rate.n
            print(f"{name}: direction {o.direction} (base {o.base_direction}), objects {o.objects}", flush=True)
        result["rrnet"] = {"per_osp": per, "pooled": {k: stats.wilson_rate([1] * a + [0] * (n - a)).as_dict()
                                                      for k, (a, n) in pooled.items()}}
    spec3, s3 = bench.task_settings(s, "inversion")
    vae3 = bench.load_pipeline(s3.model)[0].vae
    result["reversion"] = {"relation": s3.inversion_relation, "model": s3.model,
                           **vae_ceiling(spec3, vae3, s3.inversion_relation, args.scenes, args.seed)}
    spec3, s3 = bench.task_settings(s, "customisation")
    identity = bench.identity_object(s3, spec3)
    partners = [(sh, c) for sh in spec3.shapes for c in spec3.colours if c != identity[1] and sh != identity[0]]
    ceiling = bench.identity_ceiling(spec3, identity, s3.customisation_relation, partners, vae3, args.seed,
                                     n=args.scenes)
    result["relationbooth"] = {"identity": s3.identity, "relation": s3.customisation_relation, "model": s3.model,
                               "identity_kept": ceiling["identity"].as_dict(),
                               "relation_colour": ceiling["relation"].as_dict()}
    result["seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "ceilings.json", bench.plain(result), "ceilings", indent=1)
    atomic.write_text(out / "ceilings.md", markdown(bench.plain(result)), "ceilings report")
    print(out / "ceilings.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
