"""An RRNet run on relworld, scored the way RRNet's paper scores it: its own object-swapped pair
at new seeds, at λ = 0 (the base model), the released λ and λ = 1.

    python -m relgen.relworld.demo <run_dir> [--seeds 8] [--scales 0,0.6,1] [--pairs 2]

The run's training pair ("a cyan square is above a red circle" and its object swap "a red circle
is above a cyan square") is rendered at seeds ``0 .. --seeds - 1`` at every λ. Each image is read
the way the papers report it: the relation with both objects found by their colours (unique in
every relworld prompt), and the objects by colour and shape. Writes
``<run_dir>/demo/before_after.png`` (rows: the two prompts; columns: λ; the seeds side by side;
under each image a bar saying why: green = relation right, amber = relation right but a shape
misread, red = wrong, with what the reader saw, e.g. "circle on top") and ``demo.json``, and
prints the counts written on the picture.

Direction right = both prompts of the pair right at the same seed: an image that always puts
the square on top scores one prompt of two and no direction.

Then ``--pairs`` object-swapped pairs of other colours (not trained) are rendered at λ = 0 and
the largest λ, for one line on generalisation: RRNet's graph has nodes for the shape and
relation words only, so its edit is the same for every colour.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from relgen import atomic
from relgen.errors import ConfigError, RelgenError
from relgen.grid import labelled_grid, strip, verdict_tile
from relgen.relworld import bench
from relgen.relworld import world as rw
from relgen.relworld.detector import Reading


def relation_of(run_dir: Path) -> dict:
    """The exported relation of ``run_dir`` (``export/relation.json``, which an RRNet run writes)."""
    path = run_dir / "export" / "relation.json"
    meta = run_dir / "export" / "relgen.json"
    if not meta.exists():
        raise ConfigError(f"{run_dir}: no export/relgen.json; pass the folder of a finished relgen run")
    if not path.exists():  # only a run whose export carries a relation can be scored on its own pair
        method = json.loads(meta.read_text()).get("method")
        raise ConfigError(f"{run_dir}: the demo scores an RRNet run on relworld, this run is {method!r}")
    return json.loads(path.read_text())


def why(colour: Reading, strict: Reading, prompt: bench.Prompt) -> tuple[str, str]:
    """``(verdict, reason)`` for one image: the verdict of :data:`relgen.grid.VERDICT_COLOURS`
    and what the reader saw, in a few words ("square on top", "circle not found")."""
    (sa, _), (sb, _) = prompt.a, prompt.b
    if colour.a is None or colour.b is None:
        return "wrong", f"{sa if colour.a is None else sb} not found"
    g = colour.geometry
    if g in ("above", "on_top_of"):
        seen = f"{sa} on top"
    elif g == "below":
        seen = f"{sb} on top"
    elif g == "left_of":
        seen = f"{sa} on the left"
    elif g == "right_of":
        seen = f"{sb} on the left"
    elif g == "inside":
        seen = f"{sa} inside {sb}"
    else:
        seen = f"{sb} inside {sa}"
    if not colour.relation_ok:
        return "wrong", seen
    misread = [s for s, det in ((sa, strict.a), (sb, strict.b)) if det is None]
    if misread:
        return "partly", f"{seen}; {' and '.join(misread)} misshapen"
    return "right", seen


def _render(prompts: list[bench.Prompt], run: Path, scale: float, seeds: int, seed: int, cache: Path,
            shared: dict) -> list[list]:
    s = bench.Settings(seed=seed, samples=seeds)
    return bench.render_prompts(prompts, [p.text for p in prompts], run, {"scale": scale}, s, cache,
                                rw.WorldSpec(), shared)


def _direction(flags: Sequence[Sequence[bool]]) -> int:
    """Seeds at which both prompts of each pair (consecutive rows) are right."""
    return int(sum(x and y for i in range(0, len(flags), 2) for x, y in zip(flags[i], flags[i + 1])))


def score(run_dir: Path, seeds: int = 8, scales: Sequence[float] = (0.0, 0.6, 1.0), pairs: int = 2,
          pair_seeds: int = 4, seed: int = 0, progress=print) -> dict:
    """Render and read the run's own pair at every λ (and ``pairs`` other-colour pairs at the
    first and last λ); returns the counts and the picture's path."""
    spec = rw.WorldSpec()
    rel = relation_of(run_dir)
    a, r, b = rel["A"], rel["relation"], rel["B"]
    if a not in spec.shapes or b not in spec.shapes or r not in spec.relations:
        raise ConfigError(f"{run_dir}/export/relation.json: {a!r} {r!r} {b!r} is not a relworld relation; "
                          "the demo needs a run trained on a relworld dataset")
    arb = rel["ARB"].split()
    if len(arb) < 3 or arb[1] not in spec.colours or arb[-2] not in spec.colours:
        raise ConfigError(f"{run_dir}/export/relation.json: ARB {rel['ARB']!r} does not name two relworld colours")
    ca, cb = arb[1], arb[-2]
    osp = [bench.Prompt((a, ca), r, (b, cb), rel["ARB"]), bench.Prompt((b, cb), r, (a, ca), rel["BRA"])]
    readers = bench.readers(spec)
    run = run_dir.resolve()
    cells, counts, shared = {}, {}, {}
    # rendered through the evaluation harness (the benchmark's path), cached for this call only
    with tempfile.TemporaryDirectory(prefix="relgen-demo-") as cache:
        for lam in scales:
            progress(f"relgen demo: rendering the trained pair at λ = {lam:g} ({2 * seeds} images)")
            rows = _render(osp, run, lam, seeds, seed, Path(cache), shared)
            right, objects = [], []
            for p, row in zip(osp, rows):
                images = [np.asarray(sample.image.convert("RGB")) for sample in row]
                read = [(readers["colour"].read(img, p.a, p.relation, p.b), readers["strict"].read(img, p.a, p.relation, p.b))
                        for img in images]
                verdicts = [why(col, st, p) for col, st in read]
                right.append([col.relation_ok for col, _ in read])
                objects.append([st.both_present for _, st in read])
                cells.setdefault(p.text, []).append(strip(
                    [verdict_tile(sample.image, v, t) for sample, (v, t) in zip(row, verdicts)],
                    caption=f"λ = {lam:g}: relation right {sum(right[-1])}/{seeds}, "
                            f"objects right {sum(objects[-1])}/{seeds}", margin=24))
            counts[f"{lam:g}"] = {"unseen_direction_right": int(sum(right[0])), "seen_direction_right": int(sum(right[1])),
                                  "direction_right": _direction(right), "objects_right": [int(sum(o)) for o in objects],
                                  "of": seeds}
        general = None
        if pairs > 0:
            others = bench.rectification_prompts(spec, rw.BiasedPair(b, a, r), pairs, seed, (ca, cb))
            general = {"prompts": [p.text for p in others], "of": pairs * pair_seeds}
            for lam in (scales[0], scales[-1]):
                progress(f"relgen demo: other colours at λ = {lam:g} ({len(others) * pair_seeds} images)")
                rows = _render(others, run, lam, pair_seeds, seed, Path(cache), shared)
                flags = [[readers["colour"].read(np.asarray(sm.image.convert("RGB")), p.a, p.relation, p.b).relation_ok
                          for sm in row] for p, row in zip(others, rows)]
                general[f"{lam:g}"] = _direction(flags)
    direction = ", ".join(f"λ = {k}: {v['direction_right']}/{seeds}" for k, v in counts.items())
    grid = labelled_grid([cells[p.text] for p in osp],
                         row_labels=[f"{osp[0].text}\n(the direction pretraining never shows)",
                                     f"{osp[1].text}\n(its object swap)"],
                         title=f"RRNet on its own object-swapped pair, seeds {seed}..{seed + seeds - 1}. Direction "
                               f"right (both prompts right at a seed): {direction}. Bars: green relation right, "
                               "amber right but a shape misread, red wrong.", label_width=200)
    out = run_dir / "demo"
    out.mkdir(exist_ok=True)
    path = out / "before_after.png"
    atomic.save_image(path, grid, "demo picture")  # no half-written picture
    result = {"relation": f"{a} {r} {b}", "prompts": [p.text for p in osp], "seeds": list(range(seed, seed + seeds)),
              "counts": counts, "generalisation": general, "grid": str(path)}
    atomic.write_json(out / "demo.json", result, "demo record", indent=1)
    return result


def summary_lines(result: dict) -> list[str]:
    """What the demo prints: the counts on the picture, then the generalisation line."""
    lines = []
    seeds = len(result["seeds"])
    unseen, seen = result["prompts"]
    for key, c in result["counts"].items():
        lines.append(f"λ = {key}: '{unseen}' right {c['unseen_direction_right']}/{seeds}, its object swap right "
                     f"{c['seen_direction_right']}/{seeds}, direction right (both at a seed) "
                     f"{c['direction_right']}/{seeds}; objects right {c['objects_right'][0]}/{seeds} and "
                     f"{c['objects_right'][1]}/{seeds}")
    g = result.get("generalisation")
    if g:
        first, last = list(result["counts"])[0], list(result["counts"])[-1]
        moved = g[last] - g[first]
        lines.append(f"other colours (not trained; RRNet's graph has no colour nodes): direction right {g[first]}/{g['of']} "
                     f"at λ = {first}, {g[last]}/{g['of']} at λ = {last}: "
                     + ("the edit does not carry to other colours on this model" if moved <= g["of"] // 4 else
                        "part of the edit carries to other colours"))
    lines.append(f"picture: {result['grid']}")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished RRNet run on relworld")
    p.add_argument("--seeds", type=int, default=8, help="seeds per prompt of the trained pair")
    p.add_argument("--scales", default="0,0.6,1", help="RRNet's λ values, comma-separated (first: the base)")
    p.add_argument("--pairs", type=int, default=2, help="object-swapped pairs of other colours (0: none)")
    p.add_argument("--pair-seeds", type=int, default=4, help="seeds per prompt of the other-colour pairs")
    args = p.parse_args(argv)
    try:
        scales = [float(x) for x in args.scales.split(",") if x.strip()]
    except ValueError:
        scales = []
    if not scales or args.seeds < 1 or args.pairs < 0 or args.pair_seeds < 1:
        print(f"error: --scales takes comma-separated numbers, e.g. 0,0.6,1 (got {args.scales!r}); --seeds and "
              "--pair-seeds at least 1, --pairs at least 0", file=sys.stderr)
        return 2
    try:
        result = score(args.run_dir, args.seeds, scales, args.pairs, args.pair_seeds)
    except RelgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
