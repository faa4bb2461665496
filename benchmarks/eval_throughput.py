"""Scoring throughput of each evaluation metric, and the harness's overhead over the bare calls.

For every metric the script scores the same images twice, interleaved ``--pairs`` times:

* **bare**: the metric's own ``score`` (or ``score_set``) on in-memory samples, the model
  already loaded: the model calls and the metric's arithmetic, nothing else;
* **harness**: :func:`relgen.evaluate.harness.score_all` with the same metric object on the
  same images, with the score cache not read (``cache=false``): what ``python -m
  relgen.evaluate`` adds per image (content hashes for the cache keys, writing every score to
  the cache, bookkeeping). Loading a model happens once per evaluation in both; its time (the
  first call) is reported beside.

It reports images per second of both and the median harness/bare ratio (goal <= 1.1) with the
spread. Models are the tiny random-weight ones of :mod:`relgen.evaluate.tiny`; the images are
relworld renders (64 px).

    python benchmarks/eval_throughput.py                      # every metric, this machine
    python benchmarks/eval_throughput.py --metrics clip_t,vlm_relation --images 32 --device cuda

Results go to ``benchmarks/results/eval_throughput_tiny_<device>.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ALL = ("clip_t", "clip_r", "clip_i", "dino", "detector_relation", "vlm_relation", "fid", "relworld")


def _prompts(n_refs_dir: Path):
    from relgen.relworld.metric import relworld_prompt
    from relgen.relworld import world as rw

    spec = rw.WorldSpec()
    out = []
    for i, relation in enumerate(spec.relations):
        a, b = spec.objects[i % len(spec.objects)], spec.objects[(i + 5) % len(spec.objects)]
        if a[0] == b[0] or a[1] == b[1]:
            b = spec.objects[(i + 7) % len(spec.objects)]
        p = relworld_prompt(a, relation, b, spec=spec, pair_index=i)
        refs = sorted(str(x) for x in n_refs_dir.glob("*.png"))[:2]
        out.append(replace(p, references={p.a: refs[:1], p.b: refs[1:2]}))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", default=",".join(ALL))
    parser.add_argument("--images", type=int, default=24, help="images per measurement")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved bare/harness measurements")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from relgen.evaluate import config as ec
    from relgen.evaluate import tiny
    from relgen.evaluate.harness import Condition, Evaluation, score_all
    from relgen.evaluate.metrics import build_metric
    from relgen.evaluate.metrics.fid import Fid
    from relgen.evaluate.samples import Sample
    from relgen.relworld import world as rw

    metrics = [m for m in args.metrics.split(",") if m]
    root = Path(tempfile.mkdtemp(prefix="relgen-eval-bench-"))
    refs = root / "refs"
    refs.mkdir()
    spec = rw.WorldSpec()
    for i in range(8):  # reference images: relworld renders
        image, _ = rw.sample_scene(np.random.default_rng([1, i]), spec).render()
        Image.fromarray(image).save(refs / f"{i:02d}.png")
    prompts = _prompts(refs)
    words = tiny.prompt_words(prompts)
    models = {"clip": tiny.write_tiny_clip(root / "clip", words=words),
              "dino": tiny.write_tiny_vit(root / "dino"),
              "dinov2": tiny.write_tiny_vit(root / "dinov2", kind="dinov2"),
              "owl": tiny.write_tiny_owlv2(root / "owl", words=words),
              "llava": tiny.write_tiny_llava(root / "llava", words=words)}
    eval_cfg = ec.EvalModelsConfig(
        device=args.device, clip=ec.ClipConfig(pretrained=str(models["clip"])),
        dino=ec.DinoConfig(pretrained=str(models["dino"])),
        detector=ec.DetectorConfig(pretrained=str(models["owl"])),
        judge=ec.JudgeConfig(pretrained=str(models["llava"]), dtype="float32", max_new_tokens=8),
        fid=ec.FidConfig(features="dino", pretrained=str(models.get("dinov2", models["dino"])), reference_dir=str(refs)))

    # the images: relworld scenes of the prompts, written in the harness's folder layout
    from relgen.generate import slug

    samples = []
    per_prompt = max(1, args.images // len(prompts))
    for i, p in enumerate(prompts):
        folder = root / "images" / "method" / slug(p.id)
        folder.mkdir(parents=True)
        for seed in range(per_prompt):
            scene = rw.sample_scene(np.random.default_rng([2, i, seed]), spec, p.relation,
                                    tuple(p.objects["a"]), tuple(p.objects["b"]))
            path = folder / f"{seed:04d}.png"
            Image.fromarray(scene.render()[0]).save(path)
            samples.append(Sample(p, seed, "method", Image.open(path).convert("RGB"), path))
    n = len(samples)
    cfg = ec.EvaluateConfig(images_dir=str(root / "images"), cache=False, eval=eval_cfg, resamples=1000)

    results = {}
    for name in metrics:
        metric = build_metric(name, eval_cfg) if name != "fid" else Fid(eval_cfg.fid, torch.device(args.device))
        run = (lambda: metric.score_set(samples)) if not metric.per_image else (lambda: metric.score(samples))
        t = time.perf_counter()
        run()  # load the model, warm up
        first = time.perf_counter() - t
        bare, harness = [], []
        for _ in range(args.pairs):
            t = time.perf_counter()
            run()
            bare.append(time.perf_counter() - t)
            ev = Evaluation(replace_metrics(cfg, name), "bench", prompts, list(range(per_prompt)),
                            [Condition("method", str(root / "images" / "method"), "folder")], None, {})
            ev.samples["method"] = samples
            t = time.perf_counter()
            score_all(ev, root / "cache", torch.device(args.device), progress=False, metrics={name: metric})
            harness.append(time.perf_counter() - t)
        ratios = [h / b for h, b in zip(harness, bare)]
        results[name] = {"images": n, "first_call_s": first, "bare_images_per_s": n / statistics.median(bare),
                         "harness_images_per_s": n / statistics.median(harness),
                         "overhead_ratio_median": statistics.median(ratios),
                         "overhead_ratio_range": [min(ratios), max(ratios)]}
        r = results[name]
        print(f"{name:18s} bare {r['bare_images_per_s']:8.1f} img/s  harness {r['harness_images_per_s']:8.1f} img/s  "
              f"ratio {r['overhead_ratio_median']:.3f} [{min(ratios):.3f}, {max(ratios):.3f}]", flush=True)
    kind = "tiny"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"eval_throughput_{kind}_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"images": n, "pairs": args.pairs, "device": args.device, "threads": torch.get_num_threads(),
            "models": kind, "command": "python benchmarks/eval_throughput.py " + " ".join(argv or sys.argv[1:])}
    out.write_text(json.dumps({"meta": meta, "metrics": results}, indent=1))
    print(out)
    return 0


def replace_metrics(cfg, name):
    """``cfg`` scoring only metric ``name``."""
    return replace(cfg, metrics=[name])


if __name__ == "__main__":
    sys.exit(main())
