"""``python -m relgen.generate``: the command line of :mod:`relgen.generate` (the library)."""

from __future__ import annotations

import sys
from typing import Optional

from omegaconf import OmegaConf

from relgen.api import load
from relgen.backbones.base import _SCHEDULERS as _SCHEDULER_NAMES
from relgen.console import run_cli
from relgen.errors import ConfigError
from relgen.generate import GenerationOptions, generate_from_run


def benchmark_prompts(run_dir: str, relation: str, step: Optional[int] = None) -> list[str]:
    """The templates of ``relation`` in the run's method's benchmark (:meth:`Artifact.benchmark_prompts`)."""
    scenarios = load(run_dir, step=step).artifact.benchmark_prompts()
    if relation not in scenarios:
        if not scenarios:
            raise ConfigError(f"relation={relation}: the run's method has no benchmark prompts; give prompt=...")
        raise ConfigError(f"relation '{relation}' is not a benchmark relation; known: {sorted(scenarios)}")
    return list(scenarios[relation])


#: ``python -m relgen.generate`` options: name -> help line (``--help`` prints them).
OPTIONS: dict[str, str] = {
    "run_dir": "a finished run's folder (required); its export/ is applied to its backbone",
    "prompt": "one prompt, e.g. prompt=\"cat <R> stone\"",
    "prompts": "several prompts, e.g. 'prompts=[cat <R> stone,dog <R> box]'",
    "relation": "a benchmark relation of the run's method (ReVersion's): its prompts with the run's token, in one grid",
    "limit": "render only the first N prompts",
    "num_images": "images per prompt (default 4); image i uses seed seed+i",
    "seed": "first seed (default 0)",
    "steps": "denoising steps (default: the run's method.sample_steps, then the backbone's)",
    "guidance": "classifier-free guidance scale (default: the run's, then the backbone's)",
    "scheduler": "inference scheduler: " + ", ".join(sorted(_SCHEDULER_NAMES)) + " (default: the backbone's)",
    "height": "image height in pixels (default: the backbone's resolution)",
    "width": "image width in pixels (default: the backbone's resolution)",
    "negative_prompt": "negative prompt for classifier-free guidance",
    "batch_size": "images per pipeline call (default 4)",
    "step": "use the intermediate export of that step (export/step-NNNNNN/) instead of the final one",
    "out_dir": "a new or empty folder (default: a new numbered folder <run_dir>/generate/NNNN/)",
    "method_options": "method options, e.g. RRNet's 'method_options.scales=[0,0.5,1]' (λ columns)",
}

USAGE = ("usage: python -m relgen.generate run_dir=<run folder> [prompt=...] [key=value ...]\n\n"
         "Render prompts with a finished run; every call writes a new folder with the images, one labelled\n"
         "grid and generation.json (prompts, seeds, settings).\n\noptions:\n"
         + "\n".join(f"  {k:16s} {v}" for k, v in OPTIONS.items()) + "\n")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE, end="")
        return 0

    def body() -> int:
        bad = [a for a in argv if "=" not in a]
        if bad:
            raise ConfigError(f"relgen.generate: expected key=value, got {bad[0]!r}; see python -m relgen.generate --help")
        args = OmegaConf.from_dotlist(argv)
        unknown = set(args.keys()) - set(OPTIONS)
        if unknown:
            raise ConfigError(f"relgen.generate: unknown option(s) {sorted(unknown)}; known: {sorted(OPTIONS)} "
                              "(python -m relgen.generate --help)")
        if "run_dir" not in args:
            raise ConfigError("relgen.generate: run_dir= is required (a finished run's folder); see --help")
        prompts = list(args.get("prompts") or [])
        if args.get("prompt"):
            prompts.insert(0, str(args.prompt))
        kind = "prompts"
        relation = args.get("relation")
        if relation:
            prompts += benchmark_prompts(str(args.run_dir), relation, args.get("step"))  # "{}": the run's token
            kind = f"relation_{relation}"
        if args.get("limit") is not None:
            if int(args.limit) < 1:
                raise ConfigError(f"relgen.generate: limit={args.limit} must be >= 1 (the number of prompts to render)")
            prompts = prompts[:int(args.limit)]
        scheduler = args.get("scheduler")
        if scheduler is not None and scheduler not in _SCHEDULER_NAMES:
            raise ConfigError(f"relgen.generate: scheduler={scheduler} is not one of {sorted(_SCHEDULER_NAMES)}")
        for key in ("num_images", "batch_size", "steps", "height", "width"):
            if args.get(key) is not None and int(args.get(key)) < 1:
                raise ConfigError(f"relgen.generate: {key}={args.get(key)} must be a positive whole number")
        opts = GenerationOptions(
            seed=int(args.get("seed", 0)), num_images=int(args.get("num_images", 4)),
            steps=args.get("steps"), guidance=args.get("guidance"), scheduler=scheduler,
            batch_size=int(args.get("batch_size", 4)), negative_prompt=args.get("negative_prompt"),
            height=args.get("height"), width=args.get("width"),
            method_options=OmegaConf.to_container(args.method_options) if "method_options" in args else {})
        written = generate_from_run(str(args.run_dir), prompts, opts, args.get("out_dir"), kind=kind,
                                    step=args.get("step"), progress=True,
                                    command="python -m relgen.generate " + " ".join(argv))
        for path in written:
            print(path)
        return 0

    return run_cli(body)
