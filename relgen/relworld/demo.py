"""Before and after a relworld RRNet run, scored by the exact detector.

    python -m relgen.relworld.demo <run_dir> [--pairs 4] [--seeds 4] [--scale 1.0]

For the run's relation "A R B" (the way round pretraining never shows), ``--pairs`` colour
pairs other than the training folder's give object-swapped prompt pairs ("a red A R a blue B",
"a blue B R a red A"). Each prompt is rendered at seeds ``0 .. --seeds - 1`` with RRNet off
(λ = 0, the base model) and on (λ = ``--scale``); the strict detector (colour and shape) reads
every image. Writes ``<run_dir>/demo/before_after.png`` (columns: the two conditions; rows:
prompt and seed; a green bar under an image the detector reads as right, red as wrong) and
``demo.json``, and prints the counts the grid shows.

Direction right = both prompts of a pair right at the same seed (the relworld benchmark's
direction accuracy): an image that always puts A first would score half its prompts right and
no direction.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from relgen.errors import ConfigError, RelgenError


def relation_of(run_dir: Path) -> dict:
    """The exported RRNet relation of ``run_dir`` (``export/relation.json``)."""
    path = run_dir / "export" / "relation.json"
    meta = run_dir / "export" / "relgen.json"
    if not meta.exists():
        raise ConfigError(f"{run_dir}: no export/relgen.json; pass the folder of a finished relgen run")
    method = json.loads(meta.read_text()).get("method")
    if method != "rrnet" or not path.exists():
        raise ConfigError(f"{run_dir}: the demo scores an RRNet run on relworld, this run is {method!r}")
    return json.loads(path.read_text())


def score(run_dir: Path, pairs: int = 4, seeds: int = 4, scale: float = 1.0, seed: int = 0) -> dict:
    """Render and read the demo's prompts; returns the counts and the grid's path."""
    from relgen.generate import _save_png
    from relgen.grid import labelled_grid
    from relgen.relworld import bench
    from relgen.relworld import world as rw

    spec = rw.WorldSpec()
    rel = relation_of(run_dir)
    a, r, b = rel["A"], rel["relation"], rel["B"]
    if a not in spec.shapes or b not in spec.shapes or r not in spec.relations:
        raise ConfigError(f"{run_dir}/export/relation.json: {a!r} {r!r} {b!r} is not a relworld relation; "
                          "the demo needs a run trained on a relworld dataset")
    # the training folder's colours ("a <colour> <shape> is ..."), left out of the demo's prompts
    words = [str(rel.get(k, "")).split() for k in ("ARB", "BRA")]
    colours = tuple(w[1] for w in words if len(w) > 1 and w[1] in spec.colours)
    # rectification_prompts takes the pair pretraining shows (first R second) and returns
    # (unseen direction, seen direction) per colour pair
    prompts = bench.rectification_prompts(spec, rw.BiasedPair(b, a, r), pairs, seed, colours)
    s = bench.Settings(seed=seed, samples=seeds)
    strict = bench.relworld_readings(spec=spec)["strict"]
    run = run_dir.resolve()
    conditions = {"before: RRNet off (λ = 0)": 0.0, f"after: RRNet λ = {scale:g}": scale}
    images, right, shared = {}, {}, {}
    # rendered and read through the evaluation harness (the benchmark's path), cached for this call only
    with tempfile.TemporaryDirectory(prefix="relgen-demo-") as cache:
        for name, lam in conditions.items():
            rows = bench.render_prompts(prompts, [p.text for p in prompts], run, {"scale": lam}, s, Path(cache),
                                        spec, shared)
            images[name] = [[sample.image for sample in row] for row in rows]
            right[name] = [[reading.relation_ok for reading in strict.read(row)] for row in rows]
    names = list(conditions)
    rows, labels = [], []
    for i, p in enumerate(prompts):
        for j in range(seeds):
            rows.append([bench.mark_verdict(images[c][i][j], right[c][i][j]) for c in names])
            labels.append(f"{p.text}\nseed {seed + j}")
    grid = labelled_grid(rows, row_labels=labels, column_labels=names,
                         title=f"relworld, RRNet on '{a} {r} {b}': strict detector verdict under each image "
                               "(green right, red wrong)")
    out = run_dir / "demo"
    out.mkdir(exist_ok=True)
    path = out / "before_after.png"
    _save_png(grid, path)  # atomic: no half-written grid
    counts = {}
    n = pairs * seeds
    for c in names:
        unseen = [ok for i in range(0, len(prompts), 2) for ok in right[c][i]]
        seen = [ok for i in range(1, len(prompts), 2) for ok in right[c][i]]
        both = [x and y for x, y in zip(unseen, seen)]
        counts[c] = {"unseen_direction_right": int(sum(unseen)), "seen_direction_right": int(sum(seen)),
                     "direction_right": int(sum(both)), "of": n}
    result = {"relation": f"{a} {r} {b}", "prompts": [p.text for p in prompts], "seeds": list(range(seed, seed + seeds)),
              "counts": counts, "grid": str(path)}
    tmp = out / "demo.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "demo.json")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished RRNet run on relworld")
    p.add_argument("--pairs", type=int, default=4, help="object-swapped prompt pairs (colour pairs)")
    p.add_argument("--seeds", type=int, default=4, help="images per prompt")
    p.add_argument("--scale", type=float, default=1.0, help="RRNet's λ in the 'after' column")
    args = p.parse_args(argv)
    try:
        result = score(args.run_dir, args.pairs, args.seeds, args.scale)
    except RelgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    before, after = result["counts"].values()
    print(f"'{result['relation']}' (never shown in pretraining) drawn right: "
          f"{before['unseen_direction_right']}/{before['of']} before, {after['unseen_direction_right']}/{after['of']} after")
    print(f"its object-swapped twin drawn right: "
          f"{before['seen_direction_right']}/{before['of']} before, {after['seen_direction_right']}/{after['of']} after")
    print(f"direction right (both prompts of a pair at the same seed): "
          f"{before['direction_right']}/{before['of']} before, {after['direction_right']}/{after['of']} after")
    print(f"grid: {result['grid']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
