"""The one inference path: sample grids during training and ``python -m relgen.generate``.

``python -m relgen.generate run_dir=outputs/... prompt="a cat <R> a stone"`` loads the run's
backbone and exported artifact, renders every prompt with the same seeds, and writes one
folder of images and one grid per prompt under ``<run_dir>/generate/``.
Options: ``prompts=[..]``, ``num_images``, ``seed``, ``steps``, ``guidance``, ``scheduler``,
``batch_size``, ``negative_prompt``, ``out_dir``, ``limit`` (render only the first N prompts),
and method options under ``method_options`` (e.g. RRNet's ``method_options.scales=[0,0.5,1]``).
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch


@dataclass
class GenerationOptions:
    """How to render. ``None`` means the backbone's default (scheduler, steps, guidance)."""

    seed: int = 0
    num_images: int = 4
    steps: Optional[int] = None
    guidance: Optional[float] = None
    scheduler: Optional[str] = None
    batch_size: int = 4
    negative_prompt: Optional[str] = None
    height: Optional[int] = None
    width: Optional[int] = None
    method_options: dict = field(default_factory=dict)


@torch.no_grad()
def render(pipe, artifact, prompts: list[str], opts: GenerationOptions, backbone_cfg) -> list[list[Any]]:
    """Images per prompt; image i of every prompt uses seed ``opts.seed + i``."""
    steps = opts.steps or backbone_cfg.inference_steps
    guidance = opts.guidance if opts.guidance is not None else backbone_cfg.guidance_scale
    size = backbone_cfg.resolution
    from relgen.backbones.base import warn_if_truncated

    if getattr(pipe, "tokenizer", None) is not None:  # the text encoders read only the first 77 tokens
        warn_if_truncated(pipe.tokenizer, prompts, stacklevel=3)
    rows = []
    for prompt in prompts:
        images = []
        for start in range(0, opts.num_images, opts.batch_size):
            n = min(opts.batch_size, opts.num_images - start)
            gens = [torch.Generator().manual_seed(opts.seed + start + i) for i in range(n)]
            options = dict(opts.method_options)
            if opts.negative_prompt and "negative_prompt" in inspect.signature(artifact.pipeline_inputs).parameters:
                options.setdefault("negative_prompt", opts.negative_prompt)  # methods that build embeddings
            inputs = artifact.pipeline_inputs(pipe, [prompt] * n, **options)
            if opts.negative_prompt and "prompt" in inputs:
                inputs["negative_prompt"] = [opts.negative_prompt] * n
            out = pipe(**inputs, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=opts.height or size, width=opts.width or size, output_type="pil")
            images.extend(out.images)
        rows.append(images)
    return rows


def make_grid(rows: list[list[Any]]):
    """Paste rows of equally sized PIL images into one image (rows = prompts)."""
    from PIL import Image

    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    grid = Image.new("RGB", (cols * w, len(rows) * h), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid.paste(img, (c * w, r * h))
    return grid


def render_grid(backbone, artifact, prompts: list[str], opts: GenerationOptions, path: Path) -> Path:
    """Render ``prompts`` on the backbone's own modules and save one grid PNG."""
    pipe = backbone.pipeline(opts.scheduler)
    was_training = backbone.unet.training
    rows = render(pipe, artifact, prompts, opts, backbone.cfg)
    backbone.unet.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_png(make_grid(rows), path)
    return path


def _save_png(image, path: Path) -> None:
    from relgen.errors import write_error

    tmp = path.with_name(path.name + ".tmp")
    try:
        image.save(tmp, format="PNG")
        tmp.replace(path)
    except OSError as exc:  # no half-written PNG is left behind
        tmp.unlink(missing_ok=True)
        raise write_error(exc, path, "image grid") from None


def slug(text: str, limit: int = 80) -> str:
    return re.sub(r"[^A-Za-z0-9<>_-]+", "_", text).strip("_")[:limit] or "prompt"


def generate_from_run(run_dir: str, prompts: list[str], opts: GenerationOptions,
                      out_dir: Optional[str] = None, backbone_overrides: Optional[dict] = None) -> list[Path]:
    """Load a finished run and write one image folder and one grid per prompt.

    Steps and guidance not given fall back to the run's ``method.sample_steps`` /
    ``sample_guidance`` (then the backbone's defaults); no prompts: the run's sample prompts.
    An artifact with a ``grid(pipe, prompts, opts, backbone_cfg, out_dir)`` method may render
    its own layout (RRNet's λ grid for ``method_options.scales``); it returns ``None`` to decline.
    """
    from dataclasses import replace

    from relgen.api import load
    from relgen.errors import ConfigError

    loaded = load(run_dir)
    mcfg = loaded.meta.get("method_config") or {}
    if opts.steps is None and mcfg.get("sample_steps"):
        opts = replace(opts, steps=int(mcfg["sample_steps"]))
    if opts.guidance is None and mcfg.get("sample_guidance") is not None:
        opts = replace(opts, guidance=float(mcfg["sample_guidance"]))
    prompts = list(prompts) or loaded.artifact.sample_prompts()
    # benchmark templates ("cat {} stone") take the run's own relation token
    token = getattr(loaded.artifact, "token", "<R>")
    prompts = [p.format(token) if "{}" in p else p for p in prompts]
    if not prompts:
        raise ConfigError("relgen.generate: give prompt=... (or prompts=[...], or relation=<benchmark relation>)")
    backbone = loaded.load_backbone(**(backbone_overrides or {}))
    pipe = backbone.pipeline(opts.scheduler)
    loaded.apply(pipe)
    out = Path(out_dir) if out_dir else Path(run_dir) / "generate"
    grid = getattr(loaded.artifact, "grid", None)
    if grid is not None:
        written = grid(pipe, prompts, opts, backbone.cfg, out)
        if written is not None:
            return written
    written = []
    rows = render(pipe, loaded.artifact, prompts, opts, backbone.cfg)
    for prompt, images in zip(prompts, rows):
        folder = out / slug(prompt)
        folder.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(images):
            _save_png(img, folder / f"{i:04d}.png")
        _save_png(make_grid([images]), out / f"{slug(prompt)}.png")
        written.append(out / f"{slug(prompt)}.png")
    return written


def main(argv: Optional[list[str]] = None) -> int:
    from omegaconf import OmegaConf

    from relgen.cli import run_cli

    def body() -> int:
        args = OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None else argv))
        allowed = {"run_dir", "prompt", "prompts", "num_images", "seed", "steps", "guidance", "scheduler",
                   "batch_size", "negative_prompt", "out_dir", "method_options", "relation", "limit"}
        unknown = set(args.keys()) - allowed
        from relgen.errors import ConfigError

        if unknown:
            raise ConfigError(f"relgen.generate: unknown option(s) {sorted(unknown)}; known: {sorted(allowed)}")
        if "run_dir" not in args:
            raise ConfigError("relgen.generate: run_dir= is required (a finished run's folder)")
        prompts = list(args.get("prompts") or [])
        if args.get("prompt"):
            prompts.insert(0, str(args.prompt))
        loaded_prompts = prompts
        if args.get("relation"):
            from relgen.methods.reversion.words import load_benchmark_scenarios

            scen = load_benchmark_scenarios()
            if args.relation not in scen:
                raise ConfigError(f"relation '{args.relation}' is not a benchmark relation; known: {sorted(scen)}")
            loaded_prompts += list(scen[args.relation])  # "{}" is filled with the run's token
        if args.get("limit") is not None:
            if int(args.limit) < 1:
                raise ConfigError(f"relgen.generate: limit={args.limit} must be >= 1 (the number of prompts to render)")
            loaded_prompts = loaded_prompts[:int(args.limit)]
        opts = GenerationOptions(
            seed=int(args.get("seed", 0)), num_images=int(args.get("num_images", 4)),
            steps=args.get("steps"), guidance=args.get("guidance"), scheduler=args.get("scheduler"),
            batch_size=int(args.get("batch_size", 4)), negative_prompt=args.get("negative_prompt"),
            method_options=OmegaConf.to_container(args.method_options) if "method_options" in args else {})
        written = generate_from_run(str(args.run_dir), loaded_prompts, opts, args.get("out_dir"))
        for path in written:
            print(path)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
