"""``report.md``, ``results.json`` and the labelled grids of an evaluation.

Intervals follow the design (see :mod:`relgen.evaluate.stats`): a prompt-cluster bootstrap when
prompts have several seeds, Wilson only for independent binary outcomes; between a condition
and the baseline, which share prompts and seeds, a paired test (McNemar for rates, the paired
bootstrap for scores) and the paired cluster-bootstrap interval of the difference.

``results.json`` (schema ``relgen.evaluate/1``, documented in ``docs/evaluation.md``)::

    {"schema": "relgen.evaluate/1", "prompt_set", "created", "run_dir", "images_dir",
     "conditions": [{"name", "source", "kind", "method", "options"}], "baseline",
     "seeds": [...], "num_prompts", "sampler": {...},
     "metrics": {metric: {"model", "identity", "outputs": {output: "rate" | "score"}, "per_image"}},
     "results": {condition: {metric: {output: {"value", "ci95", "n", "clusters", "interval"}}}},
     "by_relation": {relation: {condition: {metric: {output: {...}}}}},
     "set_metrics": {metric: {condition: {...}}},
     "comparisons": [{"metric", "output", "condition", "baseline", "method", "baseline_value",
                      "effect", "ci95", "p", "test", "n", "clusters"}],
     "claims": {"<condition>_vs_<baseline>/<metric>.<output>": {"metric", "method", "baseline",
                "effect", "ci95", "p"}},
     "unparsed": {condition: int},
     "timings_s": {...}, "grids": [paths], "command": str,
     "images": [{"condition", "prompt", "seed", "path", "scores": {metric: {...}}}]}
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from relgen import atomic
from relgen.evaluate import stats
from relgen.evaluate.grids import Cell, labelled_grid
from relgen.evaluate.metrics.base import RATE
from relgen.evaluate.samples import ImageScore, Sample

SCHEMA = "relgen.evaluate/1"


def _output_values(ev, metric: str, condition: str, output: str, relation: Optional[str] = None):
    values, clusters, keys = [], [], []
    for sample, score in zip(ev.samples[condition], ev.scores[metric][condition]):
        if relation is not None and sample.prompt.relation != relation:
            continue
        v = score.values.get(output)
        if v is not None:
            values.append(float(v))
            clusters.append(sample.prompt.id)
            keys.append(sample.key)
    return values, clusters, keys


def _derived(ev, condition: str) -> dict[str, tuple[list[float], list[str]]]:
    """Outputs computed over pairs of images (relworld's direction accuracy)."""
    out = {}
    if "relworld" in ev.scores:
        flags, clusters = direction_flags(ev.samples[condition], ev.scores["relworld"][condition])
        if flags:
            out["relworld.direction_accuracy"] = ([float(f) for f in flags], clusters)
    return out


def aggregate(ev) -> dict[str, Any]:
    """Per-condition estimates, per-relation estimates, paired comparisons and claims."""
    res: dict[str, Any] = {"results": {}, "by_relation": {}, "comparisons": [], "claims": {}, "unparsed": {}}
    relations = sorted({p.relation for p in ev.prompts})
    for cond in ev.conditions:
        c = cond.name
        block: dict[str, Any] = {}
        for metric, info in ev.metric_info.items():
            if not info["per_image"]:
                continue
            block[metric] = {}
            for output, kind in info["outputs"].items():
                values, clusters, _ = _output_values(ev, metric, c, output)
                block[metric][output] = stats.summarize(values, clusters, binary=kind == RATE,
                                                        resamples=ev.cfg.resamples).as_dict()
                if len(relations) > 1:
                    for rel in relations:
                        rv, rc, _ = _output_values(ev, metric, c, output, rel)
                        est = stats.summarize(rv, rc, binary=kind == RATE, resamples=ev.cfg.resamples).as_dict()
                        res["by_relation"].setdefault(rel, {}).setdefault(c, {}).setdefault(metric, {})[output] = est
        for name, (values, clusters) in _derived(ev, c).items():
            metric, output = name.split(".")
            block.setdefault(metric, {})[output] = stats.summarize(values, clusters, binary=True,
                                                                   resamples=ev.cfg.resamples).as_dict()
        res["results"][c] = block
        if "vlm_relation" in ev.scores:
            res["unparsed"][c] = int(sum(s.unparsed for s in ev.scores["vlm_relation"][c]))
    if ev.baseline is None:
        return res
    base = ev.baseline
    for cond in ev.conditions:
        c = cond.name
        if c == base:
            continue
        pairs: list[tuple[str, str, list[float], list[float], list[str], bool]] = []
        for metric, info in ev.metric_info.items():
            if not info["per_image"]:
                continue
            for output, kind in info["outputs"].items():
                mv, mc, mk = _output_values(ev, metric, c, output)
                bv, _, bk = _output_values(ev, metric, base, output)
                by_key = dict(zip(bk, bv))
                shared = [(v, cl, by_key[k]) for v, cl, k in zip(mv, mc, mk) if k in by_key]
                if shared:
                    pairs.append((metric, output, [s[0] for s in shared], [s[2] for s in shared],
                                  [s[1] for s in shared], kind == RATE))
        derived_m, derived_b = _derived(ev, c), _derived(ev, base)
        for name, (values, clusters) in derived_m.items():
            if name in derived_b and derived_b[name][1] == clusters:
                metric, output = name.split(".")
                pairs.append((metric, output, values, derived_b[name][0], clusters, True))
        for metric, output, mv, bv, clusters, binary in pairs:
            cmp = stats.compare(mv, bv, clusters, binary=binary, resamples=ev.cfg.resamples)
            res["comparisons"].append({"metric": metric, "output": output, "condition": c, "baseline": base,
                                       "method": cmp.method, "baseline_value": cmp.baseline, "effect": cmp.effect,
                                       "ci95": [cmp.low, cmp.high], "p": cmp.p, "test": cmp.test, "n": cmp.n,
                                       "clusters": cmp.clusters})
            res["claims"][f"{c}_vs_{base}/{metric}.{output}"] = {
                "metric": f"{metric}.{output}", "method": cmp.method, "baseline": cmp.baseline,
                "effect": cmp.effect, "ci95": [cmp.low, cmp.high], "p": cmp.p}
    return res


# --------------------------------------------------------------------------------- writing


def _fmt(est: dict[str, Any], kind: str) -> str:
    if est["n"] == 0:
        return "–"
    k = 100.0 if kind == RATE else 1.0
    lo, hi = est["ci95"]
    return f"{k * est['value']:.1f} [{k * lo:.1f}, {k * hi:.1f}]"


def _kind(ev, metric: str, output: str) -> str:
    return ev.metric_info.get(metric, {}).get("outputs", {}).get(output, RATE)


def _markdown(ev, agg: dict[str, Any], grids: list[str], command: str) -> str:
    lines = [f"# Evaluation: `{ev.prompt_set}`", ""]
    lines += [f"Command: `{command}`", "",
              f"{len(ev.prompts)} prompts x {len(ev.seeds)} seeds ({ev.seeds[0]}..{ev.seeds[-1]}) per condition; "
              f"sampler {json.dumps(ev.sampler)}.", "",
              "Rates in %, scores as the metric gives them; each with its 95 % interval: a prompt-cluster "
              "bootstrap when prompts have several seeds, Wilson for one image per prompt (column `interval` "
              "of results.json).", "", "| condition | source | options |", "|---|---|---|"]
    for cond in ev.conditions:
        mark = " (baseline)" if cond.name == ev.baseline else ""
        lines.append(f"| {cond.name}{mark} | {cond.source} | {json.dumps(cond.options) if cond.options else ''} |")
    for metric, info in ev.metric_info.items():
        lines += ["", f"## {metric}", "", f"Model: `{info['model']}`", ""]
        if not info["per_image"]:
            lines += ["| condition | " + " | ".join(info["outputs"]) + " | images | references |",
                      "|---" * (len(info["outputs"]) + 3) + "|"]
            for c, values in ev.set_scores.get(metric, {}).items():
                cells = [f"{values[o]:.2f}" for o in info["outputs"]]
                lines.append(f"| {c} | " + " | ".join(cells) + f" | {values.get('n', '')} | {values.get('n_reference', '')} |")
            continue
        outputs = list(agg["results"][ev.conditions[0].name].get(metric, {}))
        lines += ["| condition | " + " | ".join(outputs) + " |", "|---" * (len(outputs) + 1) + "|"]
        for cond in ev.conditions:
            row = agg["results"][cond.name].get(metric, {})
            lines.append(f"| {cond.name} | " + " | ".join(_fmt(row[o], _kind(ev, metric, o)) for o in outputs) + " |")
        if agg["by_relation"]:
            lines += ["", f"By relation ({outputs[0]}):", "", "| relation | " + " | ".join(c.name for c in ev.conditions)
                      + " |", "|---" * (len(ev.conditions) + 1) + "|"]
            for rel, per in agg["by_relation"].items():
                cells = [_fmt(per[c.name][metric][outputs[0]], _kind(ev, metric, outputs[0]))
                         if metric in per.get(c.name, {}) else "–" for c in ev.conditions]
                lines.append(f"| {rel} | " + " | ".join(cells) + " |")
    if agg["comparisons"]:
        lines += ["", f"## Paired comparisons with `{ev.baseline}`", "",
                  "Same prompts and seeds; effect = condition - baseline with the paired prompt-cluster bootstrap "
                  "95 % interval; p from McNemar's exact test (rates) or the paired bootstrap (scores).", "",
                  "| metric | condition | condition value | baseline value | effect [95 % CI] | p | test |",
                  "|---|---|---|---|---|---|---|"]
        for c in agg["comparisons"]:
            k = 100.0 if _kind(ev, c["metric"], c["output"]) == RATE else 1.0
            lines.append(f"| {c['metric']}.{c['output']} | {c['condition']} | {k * c['method']:.1f} | "
                         f"{k * c['baseline_value']:.1f} | {k * c['effect']:+.1f} [{k * c['ci95'][0]:+.1f}, "
                         f"{k * c['ci95'][1]:+.1f}] | {c['p']:.3g} | {c['test']} |")
    if agg["unparsed"]:
        lines += ["", "## Judge answers that parsed as nothing", "",
                  "Counted as failures, never dropped: " + ", ".join(f"{c}: {n}" for c, n in agg["unparsed"].items()) + "."]
    if grids:
        lines += ["", "## Grids", "", "Rows = prompt x seed, columns = conditions; verdicts under the images, "
                  "boxes green where the verdict is right, red where not.", ""]
        lines += [f"- [{g}]({g})" for g in grids]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in ev.timings.items())
    lines += ["", f"Time: {timing}.", ""]
    return "\n".join(lines)


def write_grids(ev, folder: Path) -> list[str]:
    from relgen.generate import _save_png

    names = [c.name for c in ev.conditions]
    index = {c: {s.key: i for i, s in enumerate(ev.samples[c])} for c in names}
    keys = [s.key for s in ev.samples[names[0]]]
    prompts = {s.key: s.prompt for s in ev.samples[names[0]]}
    rows = []
    for key in keys:
        cells = []
        for c in names:
            i = index[c][key]
            lines, boxes = [], []
            for metric, per in ev.scores.items():
                sc = per[c][i]
                lines.append(f"{metric}: {sc.verdict}"[:40])
                boxes += sc.boxes
            cells.append(Cell(ev.samples[c][i].image, lines, boxes))
        rows.append((f"{prompts[key].readable} | seed {key[1]}", cells))
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    per = max(1, ev.cfg.grid_rows)
    for n, start in enumerate(range(0, len(rows), per)):
        name = f"grids/grid-{n:03d}.png"
        _save_png(labelled_grid(names, rows[start:start + per]), folder.parent / name)
        written.append(name)
    return written


def write_report(ev, out: Path, command: Optional[str] = None) -> Path:
    """Write the report into ``<out>.partial`` and rename it to ``out`` when complete."""
    out = Path(out)
    with atomic.folder(out, "evaluation report", temp=out.with_name(out.name + ".partial")) as tmp:
        command = command or "python -m relgen.evaluate " + " ".join(sys.argv[1:])
        agg = aggregate(ev)
        grids = write_grids(ev, tmp / "grids")
        data = {
            "schema": SCHEMA, "prompt_set": ev.prompt_set, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "run_dir": ev.cfg.run_dir, "images_dir": ev.cfg.images_dir,
            "conditions": [c.describe() for c in ev.conditions], "baseline": ev.baseline, "seeds": ev.seeds,
            "num_prompts": len(ev.prompts), "sampler": ev.sampler, "metrics": ev.metric_info,
            "results": agg["results"], "by_relation": agg["by_relation"], "set_metrics": ev.set_scores,
            "comparisons": agg["comparisons"], "claims": agg["claims"], "unparsed": agg["unparsed"],
            "timings_s": ev.timings, "grids": grids, "command": command,
            "images": [{"condition": c.name, "prompt": s.prompt.id, "seed": s.seed,
                        "path": str(s.path) if s.path else None,
                        "scores": {m: per[c.name][i].as_dict() for m, per in ev.scores.items()}}
                       for c in ev.conditions for i, s in enumerate(ev.samples[c.name])],
        }
        (tmp / "results.json").write_text(json.dumps(data, indent=1, default=str))
        (tmp / "report.md").write_text(_markdown(ev, agg, grids, command))
    return out


def direction_flags(samples: list[Sample], scores: list[ImageScore]) -> tuple[list[bool], list[str]]:
    """Direction accuracy per object-swapped pair: both prompts of the pair, same seed and
    condition, right. Returns ``(flags, cluster)`` with the pair's "A r B" prompt as cluster."""
    found: dict[tuple, dict[int, bool]] = {}
    for s, sc in zip(samples, scores):
        key = (s.condition, s.prompt.pair, s.seed)
        found.setdefault(key, {})[s.prompt.order] = bool(sc.values.get("relation_accuracy"))
    flags, clusters = [], []
    for (condition, pair, seed), by_order in sorted(found.items(), key=lambda kv: str(kv[0])):
        if set(by_order) == {0, 1}:
            flags.append(by_order[0] and by_order[1])
            clusters.append(pair[0])
    return flags, clusters
