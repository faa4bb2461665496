"""``python -m relgen.generate``: the command line of :mod:`relgen.generate` (the library).

A Hydra app on the primary config ``generate`` (``conf/generate.yaml``), typed by
:class:`GenerateConfig`: a value of the wrong type or a misspelt key is refused in one line before
anything loads; no Hydra output folder is made and the working directory stays as it is.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from relgen.api import load
from relgen.backbones.base import _SCHEDULERS as _SCHEDULER_NAMES
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


@dataclass
class GenerateConfig:
    """The keys of ``python -m relgen.generate`` (:data:`OPTIONS` says what each does)."""

    run_dir: Optional[str] = None
    prompt: Optional[str] = None
    prompts: list[str] = field(default_factory=list)
    relation: Optional[str] = None
    limit: Optional[int] = None
    num_images: int = 4
    seed: int = 0
    steps: Optional[int] = None
    guidance: Optional[float] = None
    scheduler: Optional[str] = None
    height: Optional[int] = None
    width: Optional[int] = None
    negative_prompt: Optional[str] = None
    batch_size: int = 4
    step: Optional[int] = None
    out_dir: Optional[str] = None
    method_options: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)

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

USAGE = ("usage: python -m relgen.generate run_dir=<run folder> [prompt=...] [key=value ...]   (or relgen-generate)\n\n"
         "Render prompts with a finished run; every call writes a new folder with the images, one labelled\n"
         "grid and generation.json (prompts, seeds, settings). Every value is typed and checked before\n"
         "anything loads; prompts are taken as typed (no extra quoting for <R>).\n\noptions:\n"
         + "\n".join(f"  {k:16s} {v}" for k, v in OPTIONS.items()) + "\n\n"
         "examples:\n"
         "  relgen-generate run_dir=outputs/rrnet/relworld/relworld_rrnet/<run>     # the run's own sample prompts\n"
         "  relgen-generate run_dir=runs/painted_on \"prompt=a cat <R> a stone\" num_images=8 seed=100\n"
         "  relgen-generate run_dir=runs/painted_on relation=painted_on limit=4 steps=30 guidance=7.5\n"
         "  relgen-generate run_dir=runs/placed \"prompt=a book <R> a bowl\" 'method_options.scales=[0,0.5,1]'\n\n"
         "Hydra's own flags (--cfg job, --hydra-help) work as for python -m relgen.\n")

#: Keys whose values are free text or paths, taken verbatim (see :func:`relgen.cli.hydra_override`): a
#: sweep's job folder is named e.g. ``001_method.relation=above``.
FREE_TEXT = ("run_dir", "out_dir", "prompt", "negative_prompt")


def main(argv: Optional[list[str]] = None) -> int:
    from relgen.cli import hydra_override, run_hydra_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE, end="")
        return 0
    overrides = [hydra_override(a, free_text=FREE_TEXT, free_lists=("prompts",), open_dicts=("method_options",))
                 for a in argv]
    return run_hydra_command("generate", lambda cfg: _generate(cfg, argv), overrides, "relgen.generate")


def _generate(cfg, argv: list[str]) -> int:
    args: GenerateConfig = OmegaConf.to_object(cfg)
    if args.run_dir is None:
        raise ConfigError("relgen.generate: run_dir= is required (a finished run's folder); see --help")
    prompts = list(args.prompts)
    if args.prompt:
        prompts.insert(0, args.prompt)
    kind = "prompts"
    if args.relation:
        prompts += benchmark_prompts(args.run_dir, args.relation, args.step)  # "{}": the run's token
        kind = f"relation_{args.relation}"
    if args.limit is not None:
        if args.limit < 1:
            raise ConfigError(f"relgen.generate: limit={args.limit} must be >= 1 (the number of prompts to render)")
        prompts = prompts[:args.limit]
    if args.scheduler is not None and args.scheduler not in _SCHEDULER_NAMES:
        raise ConfigError(f"relgen.generate: scheduler={args.scheduler} is not one of {sorted(_SCHEDULER_NAMES)}")
    for key in ("num_images", "batch_size", "steps", "height", "width"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise ConfigError(f"relgen.generate: {key}={getattr(args, key)} must be a positive whole number")
    opts = GenerationOptions(
        seed=args.seed, num_images=args.num_images, steps=args.steps, guidance=args.guidance,
        scheduler=args.scheduler, batch_size=args.batch_size, negative_prompt=args.negative_prompt,
        height=args.height, width=args.width, method_options=dict(args.method_options))
    written = generate_from_run(args.run_dir, prompts, opts, args.out_dir, kind=kind, step=args.step, progress=True,
                                command="python -m relgen.generate " + " ".join(argv))
    for path in written:
        print(path)
    return 0
