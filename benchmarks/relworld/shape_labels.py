"""The shape reader checked against hand labels of objects cut from the model's own images.

    python benchmarks/relworld/shape_labels.py crops --out /tmp/shapes      # render, cut, contact sheets
    python benchmarks/relworld/shape_labels.py score                        # readers against the labels

``crops`` renders relworld prompts (random shapes, colours and named relations, two seeds each)
with the shipped model through the evaluation harness, cuts out the largest component of each
prompted colour (the object the relation reading finds) with a margin, and writes the crops and
numbered contact sheets (crops enlarged, no reader output on them) for labelling by eye.

The labels live beside the crops in ``tests/data/relworld_shapes/`` (``labels.json``: per crop its
colour, the prompted shape and the shape a person sees, or ``other`` for a blob no shape name
fits). ``score`` reports each reader's agreement with them: the shape it names (``other`` below
its acceptance threshold) and the decision the strict reading takes, "is this the prompted
shape?".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LABELS = HERE.parents[1] / "tests" / "data" / "relworld_shapes"


def render_crops(out: Path, prompts: int = 70, seeds: int = 2, seed: int = 11, margin: int = 3) -> list[dict]:
    from PIL import Image

    from relgen.grid import labelled_grid
    from relgen.relworld import bench
    from relgen.relworld import world as rw
    from relgen.relworld.detector import Detector, DetectorConfig

    spec = rw.WorldSpec()
    rng = np.random.default_rng([seed, 71])
    named = [r for r in spec.relations if r != spec.heldout_relation]
    plist = []
    while len(plist) < prompts:
        sa, sb = (spec.shapes[k] for k in rng.choice(len(spec.shapes), 2, replace=False))
        ca, cb = (spec.colours[k] for k in rng.choice(len(spec.colours), 2, replace=False))
        r = named[int(rng.integers(len(named)))]
        if spec.forbidden(r, sa, sb):
            continue
        plist.append(bench.Prompt((sa, ca), r, (sb, cb), rw.prompt((sa, ca), r, (sb, cb), spec)))
    s = bench.Settings(seed=seed, samples=seeds)
    rows = bench.render_prompts(plist, [p.text for p in plist], None, {}, s, out / "cache", spec)
    colour_reader = Detector(spec, DetectorConfig(match_shape=False))
    crops_dir = out / "crops"
    crops_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for p, row in zip(plist, rows):
        for sample in row:
            image = np.asarray(sample.image.convert("RGB"))
            labels = colour_reader.colour_labels(image)
            for shape, colour in (p.a, p.b):
                comps = colour_reader.components(labels, colour)
                if not comps:
                    continue
                r_idx, c_idx = np.nonzero(comps[0])
                h, w = comps[0].shape
                y0, y1 = max(0, r_idx.min() - margin), min(h, r_idx.max() + 1 + margin)
                x0, x1 = max(0, c_idx.min() - margin), min(w, c_idx.max() + 1 + margin)
                name = f"{len(items):03d}.png"
                Image.fromarray(image[y0:y1, x0:x1]).save(crops_dir / name)
                items.append({"file": name, "colour": colour, "prompted": shape, "prompt": p.text,
                              "seed": sample.seed})
    # contact sheets: 8 x 6 crops per sheet, each enlarged to 96 px, numbered
    per = 48
    for k in range(0, len(items), per):
        cells = [Image.open(crops_dir / it["file"]).convert("RGB") for it in items[k:k + per]]
        cells = [c.resize((96 * c.width // max(c.size), 96 * c.height // max(c.size)), Image.NEAREST) for c in cells]
        padded = []
        for c in cells:
            canvas = Image.new("RGB", (96, 96), (128, 128, 128))
            canvas.paste(c, ((96 - c.width) // 2, (96 - c.height) // 2))
            padded.append(canvas)
        grid_rows = [padded[i:i + 8] for i in range(0, len(padded), 8)]
        while len(grid_rows[-1]) < 8:
            grid_rows[-1].append(Image.new("RGB", (96, 96), (255, 255, 255)))
        first = [k + i for i in range(0, len(padded), 8)]
        labelled_grid(grid_rows, row_labels=[f"{i:03d}-{i + 7:03d}" for i in first],
                      column_labels=[f"+{j}" for j in range(8)], title="crops").save(out / f"sheet_{k // per}.png")
    (out / "crops.json").write_text(json.dumps(items, indent=1) + "\n")
    return items


def load_labels(folder: Path = LABELS) -> list[dict]:
    """The labelled crops: ``labels.json`` entries with each crop as ``uint8 [H, W, 3]``."""
    from PIL import Image

    items = json.loads((folder / "labels.json").read_text())["crops"]
    for it in items:
        it["image"] = np.asarray(Image.open(folder / "crops" / it["file"]).convert("RGB"))
    return items


def label_prototypes(items: list[dict]) -> tuple[dict[str, list[float]], list[float]]:
    """Per shape the mean :func:`~relgen.relworld.detector.shape_features` of the labelled crops
    (``other`` left out), and the pooled within-class standard deviation of each feature."""
    from relgen.relworld.detector import Detector, shape_features

    det = Detector()
    by_shape: dict[str, list] = {}
    for it in items:
        if it["label"] == "other":
            continue
        comps = det.components(det.colour_labels(it["image"]), it["colour"])
        by_shape.setdefault(it["label"], []).append(shape_features(comps[0]))
    means = {k: np.mean(v, axis=0) for k, v in by_shape.items()}
    resid = np.concatenate([np.asarray(v) - means[k] for k, v in by_shape.items()])
    return {k: [round(float(x), 3) for x in m] for k, m in means.items()}, [round(float(x), 3) for x in resid.std(0)]


def ground_truth_prototypes(n: int = 400, seed: int = 977) -> dict[str, list[float]]:
    """Per shape the mean features of the objects of ``n`` ground-truth scenes (``inside`` left
    out: its objects overlap)."""
    from relgen.relworld import world as rw
    from relgen.relworld.detector import Detector, shape_features

    spec, det = rw.WorldSpec(), Detector()
    by_shape: dict[str, list] = {}
    for i in range(n):
        relation = spec.relations[i % len(spec.relations)]
        if relation == "inside":
            continue
        scene = rw.sample_scene(np.random.default_rng([seed, i]), spec, relation)
        image, _ = scene.render()
        labels = det.colour_labels(image)
        for o in scene.objects:
            by_shape.setdefault(o.shape, []).append(shape_features(det.components(labels, o.colour)[0]))
    return {k: [round(float(x), 3) for x in np.mean(v, axis=0)] for k, v in by_shape.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("crops")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--prompts", type=int, default=70)
    c.add_argument("--seeds", type=int, default=2)
    sub.add_parser("score")
    sub.add_parser("fit")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.cmd == "crops":
        items = render_crops(args.out, args.prompts, args.seeds)
        print(f"{len(items)} crops in {args.out / 'crops'}; sheets {args.out}/sheet_*.png")
        return 0
    items = load_labels()
    if args.cmd == "fit":
        means, scale = label_prototypes(items)
        print("labelled objects:", json.dumps(means), "scale:", scale)
        print("ground truth:", json.dumps(ground_truth_prototypes()))
        return 0
    from relgen.relworld.detector import Detector, DetectorConfig, reader_agreement

    readers = {"features (the reader)": Detector(), "iou (the earlier reader)": Detector(config=DetectorConfig(shape_reader="iou"))}
    for name, result in reader_agreement(items, readers).items():
        print(f"{name}: shape named {result['shape']['k']}/{result['shape']['n']}, "
              f"prompted-shape decision {result['decision']['k']}/{result['decision']['n']}")
    # two-fold cross-validation: prototypes of the labelled objects from one half, scored on the other
    base = DetectorConfig()
    gt = tuple(p for p in base.shape_prototypes[len(base.shape_prototypes) // 2:])
    for name, (fit_on, test_on) in {"even -> odd": (items[0::2], items[1::2]),
                                    "odd -> even": (items[1::2], items[0::2])}.items():
        means, scale = label_prototypes(fit_on)
        cfg = DetectorConfig(shape_prototypes=tuple((k, tuple(v)) for k, v in means.items()) + gt,
                             shape_feature_scale=tuple(scale))
        r = reader_agreement(test_on, {"cv": Detector(config=cfg)})["cv"]
        print(f"cross-validated {name}: shape named {r['shape']['k']}/{r['shape']['n']}, "
              f"decision {r['decision']['k']}/{r['decision']['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
