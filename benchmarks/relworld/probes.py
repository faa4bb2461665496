"""Probe a relworld model: can it carry a method's effect at all?

    python benchmarks/relworld/probes.py                        # the shipped model
    python benchmarks/relworld/probes.py --model /path/to/diffusers-folder --out results/probes/other

The probes (:mod:`relgen.relworld.probes`, run by :func:`relgen.relworld.bench.model_probes`):

* the diffusion classifier: on ground-truth scenes, does the true caption give a lower
  denoising error than its relation-flipped, object-swapped and colour-swapped versions
  (unbiased pairs), and on the biased pairs shown the way pretraining never shows them?
* the EOT-row polarity probe: can a linear probe read from the first EOT row which object
  comes first along the axis?
* cross-attention shares on BOS / words / the first EOT / padding;
* the free-delta oracle: a delta per prompt order optimised directly on RRNet's rows (the first
  EOT row), on the EOT and padding rows, and on all rows; the direction accuracy it reaches is
  the ceiling of an EOT-row edit;
* the strict reading's VAE ceiling on the held-out relation ``inside``.

Writes ``probes.json`` and ``probes.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from relgen.relworld import bench

HERE = Path(__file__).resolve().parent


def markdown(p: dict, model: str) -> str:
    def pct(r: dict) -> str:
        lo, hi = r["ci95"]
        return f"{100 * r['rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    dc = p["diffusion_classifier"]
    lines = [f"# relworld probes — {model}", "",
             "## Diffusion classifier (true caption preferred over ...; % of scenes, Wilson 95 %)", "",
             "| scenes | relation flip | object swap | colour swap |", "|---|---|---|---|"]
    for part in ("unbiased", "forbidden"):
        d = dc[part]
        lines.append(f"| {part} | {pct(d['relation_flip'])} | {pct(d['object_swap'])} | {pct(d['colour_swap'])} |")
    e = p["eot_polarity"]
    lines += ["", f"EOT-row polarity probe (held-out shape pairs): {100 * e['value']:.1f} % "
                  f"[{100 * e['low']:.1f}, {100 * e['high']:.1f}].", "",
              "## Caption margins (mean cosine of a caption's rows and its changed version's)", "",
              "| pairs | change | first EOT row | padding rows | captions |", "|---|---|---|---|---|"]
    for group, changes in p.get("caption_margins", {}).items():
        for change, m in changes.items():
            lines.append(f"| {group} | {change.replace('_', ' ')} | {m['eot']:.3f} | {m['padding']:.3f} | "
                         f"{m['captions']} |")
    lines += ["", "## Cross-attention shares", "", "| BOS | words | first EOT | padding |", "|---|---|---|---|",
              "| " + " | ".join(f"{100 * p['attention_shares'][k]:.1f} %" for k in ("bos", "words", "eot", "padding"))
              + " |", "", "## Free-delta oracle (biased pairs; strict reading)", "",
              "| rows | direction acc. | unseen-direction relation acc. | object acc. | base direction | base unseen | "
              "base object |", "|---|---|---|---|---|---|---|"]
    if not p["free_delta_oracle"]:
        lines.append("| not run (`--oracle-rows ''`) | | | | | | |")
    for rows, o in p["free_delta_oracle"].items():
        lines.append(f"| {rows} | {pct(o['direction'])} | {pct(o['unseen'])} | {pct(o['objects'])} | "
                     f"{pct(o['base_direction'])} | {pct(o['base_unseen'])} | {pct(o['base_objects'])} |")
    c = p["inside_vae_ceiling_strict"]
    lines += ["", f"`inside` through the VAE, strict reading: {100 * c['value']:.1f} % "
                  f"[{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}].", "",
              f"Probe time {p['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="diffusers folder or pkg:// URI (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=8, help="seeds per oracle prompt")
    p.add_argument("--scenes", type=int, default=96, help="scenes of the diffusion classifier")
    p.add_argument("--oracle-steps", type=int, default=150)
    p.add_argument("--oracle-rows", default="eot,eot_and_padding,all",
                   help="row sets of the free-delta oracle (comma-separated; empty: no oracle)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(HERE / "results" / "probes"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.utils import logging as dlog

    dlog.disable_progress_bar()
    s = bench.Settings(model=args.model, seed=args.seed, samples=args.samples)
    rows = tuple(r for r in args.oracle_rows.split(",") if r)
    probes = bench.plain(bench.model_probes(s, rows=rows, num_scenes=args.scenes, oracle_steps=args.oracle_steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps(probes, indent=2))
    (out / "probes.md").write_text(markdown(probes, args.model or "pkg://relgen.relworld/weights"))
    print(out / "probes.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
