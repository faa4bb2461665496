"""The one inference path: sample grids during training and ``python -m relgen.generate``.

``python -m relgen.generate run_dir=outputs/... prompt="a cat <R> a stone"`` loads the run's
backbone and exported artifact, renders every prompt with the same seeds, and writes a new
numbered folder ``<run_dir>/generate/NNNN/`` (earlier results are never overwritten) holding
one folder of images per prompt, one labelled grid of all of them (named
``<method>-<backbone>-<kind>.png``) and ``generation.json`` (prompts, seeds, settings).
``python -m relgen.generate --help`` lists the options; method options go under
``method_options`` (e.g. RRNet's ``method_options.scales=[0,0.5,1]``: one column per λ).
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

import relgen
from relgen import grid
from relgen.api import load
from relgen.atomic import save_image, write_json
from relgen.backbones.base import warn_if_truncated
from relgen.errors import ConfigError
from relgen.names import slug
from relgen.plugin import GridColumns  # also re-exported: what Artifact.grid_columns returns
from relgen.validation import check_generation_options, prompts_missing_token

#: The token a benchmark template's ``{}`` takes when the artifact trained none.
DEFAULT_TEMPLATE_TOKEN = "<R>"


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
def decode_latents(pipe, latents: torch.Tensor) -> list[Any]:
    """PIL images from a pipeline's ``output_type="latent"`` result, decoded in the VAE's dtype.

    The frozen UNet may run in bfloat16 or float16 (``backbone.dtype``) while the VAE stays in
    float32 (``backbone.vae_dtype``); diffusers' SD pipeline hands the UNet's latents to the
    VAE unchanged, which fails on mixed dtypes, so the latents are cast here. A float16 VAE
    whose config asks for it (SDXL's ``force_upcast``) decodes in float32, as diffusers' SDXL
    pipeline does.
    """
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        z = latents.to(vae.device, vae.dtype)
        mean = getattr(vae.config, "latents_mean", None)
        std = getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            view = (1, -1, 1, 1)
            z = z * torch.tensor(std).view(view).to(z) / vae.config.scaling_factor + torch.tensor(mean).view(view).to(z)
        else:
            z = z / vae.config.scaling_factor
        image = vae.decode(z, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype)
    return pipe.image_processor.postprocess(image.float(), output_type="pil")


@torch.no_grad()
def render(pipe, artifact, prompts: list[str], opts: GenerationOptions, backbone_cfg,
           progress: bool = False) -> list[list[Any]]:
    """Images per prompt; image i of every prompt uses seed ``opts.seed + i``.

    With ``progress``, a tqdm bar counts the images as they are written.
    """
    steps = opts.steps or backbone_cfg.inference_steps
    guidance = opts.guidance if opts.guidance is not None else backbone_cfg.guidance_scale
    size = backbone_cfg.resolution
    if getattr(pipe, "tokenizer", None) is not None:  # the text encoders read only the first 77 tokens
        warn_if_truncated(pipe.tokenizer, prompts, stacklevel=3)
    rows = []
    bar = tqdm(total=len(prompts) * opts.num_images, desc="images", unit="img", disable=not progress,
               dynamic_ncols=True)
    for prompt in prompts:
        images = []
        for start in range(0, opts.num_images, opts.batch_size):
            n = min(opts.batch_size, opts.num_images - start)
            gens = [torch.Generator().manual_seed(opts.seed + start + i) for i in range(n)]
            options = dict(opts.method_options)
            if opts.negative_prompt and artifact.accepts_negative_prompt:
                options.setdefault("negative_prompt", opts.negative_prompt)  # methods that build embeddings
            inputs = artifact.pipeline_inputs(pipe, [prompt] * n, **options)
            if opts.negative_prompt and "prompt" in inputs:
                inputs["negative_prompt"] = [opts.negative_prompt] * n
            out = pipe(**inputs, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                       height=opts.height or size, width=opts.width or size, output_type="latent")
            images.extend(decode_latents(pipe, out.images))
            bar.update(n)
        rows.append(images)
    bar.close()
    return rows


def prompt_grid(rows: list[list[Any]], prompts: list[str], seed: int, title: Optional[str] = None):
    """The labelled grid of :func:`render`'s output: a row per prompt, a column per seed."""
    return grid.labelled_grid(rows, row_labels=list(prompts),
                              column_labels=grid.seed_labels(seed, max(len(r) for r in rows)), title=title)


def render_grid(backbone, artifact, prompts: list[str], opts: GenerationOptions, path: Path,
                title: Optional[str] = None, progress: bool = False, inspect_rows=None) -> Path:
    """Render ``prompts`` on the backbone's own modules and save one labelled grid PNG
    (``progress``: a bar counts the images; ``inspect_rows(rows)`` is called with the rendered
    images first, every column's for a grid of columns)."""
    pipe = backbone.pipeline(opts.scheduler)
    was_training = backbone.unet.training
    spec = artifact.grid_columns(pipe, prompts, opts, backbone.cfg, progress=progress)  # e.g. RRNet's λ columns
    if spec is not None:
        if inspect_rows is not None:
            inspect_rows([images for cells in spec.cells for images in cells])
        image = columns_grid(spec, prompts, opts.seed, title)
    else:
        rows = render(pipe, artifact, prompts, opts, backbone.cfg, progress=progress)
        if inspect_rows is not None:
            inspect_rows(rows)
        image = prompt_grid(rows, prompts, opts.seed, title)
    backbone.unet.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_png(image, path)
    return path


def columns_grid(spec: GridColumns, prompts: list[str], seed: int, title: Optional[str] = None):
    """The labelled grid of an artifact's :class:`GridColumns`: a row per prompt and seed, a column
    per condition, headed by the artifact's labels."""
    grid_rows, labels = [], []
    for p, prompt in enumerate(prompts):
        for i in range(len(spec.cells[p][0])):
            grid_rows.append([spec.cells[p][c][i] for c in range(len(spec.columns))])
            labels.append(f"{prompt}\nseed {seed + i}")
    return grid.labelled_grid(grid_rows, row_labels=labels, column_labels=spec.columns, title=title)


def sample_grid(backbone, artifact, prompts: list[str], path: Path, seed: int = 0, num_images: int = 4,
                steps: Optional[int] = None, guidance: Optional[float] = None, title: Optional[str] = None,
                progress: bool = False, inspect_rows=None) -> Path:
    """A training-time sample grid (what :class:`relgen.train.loop.Trainer` is given to draw one)."""
    opts = GenerationOptions(seed=seed, num_images=num_images, steps=steps, guidance=guidance)
    return render_grid(backbone, artifact, prompts, opts, path, title=title, progress=progress,
                       inspect_rows=inspect_rows)


def _save_png(image, path: Path) -> None:
    save_image(path, image, "image grid")  # no half-written PNG is left behind


def new_output_folder(parent: Path) -> Path:
    """Create and return ``parent/NNNN``, one more than the highest numbered folder there.

    Earlier results are never overwritten; two processes started together get different
    folders (``mkdir`` fails for the second, which takes the next number).
    """
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in parent.iterdir() if p.is_dir() and p.name.isdigit()]
    number = max(taken, default=0) + 1
    while True:
        folder = parent / f"{number:04d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def check_out_dir(run_dir: str, out_dir: Optional[str]) -> None:
    """Refuse an ``out_dir`` that already holds files (checked before anything loads)."""
    if out_dir is None:
        return
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"relgen.generate: out_dir={out} already holds files; choose a new folder, or leave "
                          f"out_dir unset to write a new numbered folder under {Path(run_dir) / 'generate'}")


def _output_folder(run_dir: str, out_dir: Optional[str]) -> Path:
    if out_dir is None:
        return new_output_folder(Path(run_dir) / "generate")
    check_out_dir(run_dir, out_dir)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def grid_file_name(meta: dict, kind: str) -> str:
    """``<method>-<backbone>-<kind>.png``: what a grid holds, not its first prompt."""
    backbone = meta.get("backbone") or {}
    name = backbone.get("name", "backbone") if isinstance(backbone, dict) else str(backbone)
    return f"{slug(meta.get('method', 'run'))}-{slug(name)}-{slug(kind)}.png"


def generate_from_run(run_dir: str, prompts: list[str], opts: GenerationOptions,
                      out_dir: Optional[str] = None, backbone_overrides: Optional[dict] = None,
                      kind: str = "prompts", step: Optional[int] = None, progress: bool = False,
                      command: Optional[str] = None) -> list[Path]:
    """Load a finished run and write one image folder per prompt and one labelled grid.

    Everything goes into a new folder (``<run_dir>/generate/NNNN/`` unless ``out_dir`` names
    a new or empty one) with ``generation.json``: the prompts, seeds, every setting, the
    files written. Steps and guidance not given fall back to the run's
    ``method.sample_steps`` / ``sample_guidance`` (then the backbone's defaults); no prompts:
    the run's sample prompts. The artifact's :meth:`~relgen.plugin.Artifact.grid_columns` may
    render conditions as columns (RRNet's λ sweep for ``method_options.scales``); it returns
    ``None`` to decline. Returns the grid's path.
    """
    check_generation_options(opts)
    check_out_dir(run_dir, out_dir)
    loaded = load(run_dir, step=step)
    loaded.artifact.check_options(opts.method_options)
    mcfg = loaded.meta.get("method_config") or {}
    if opts.steps is None and mcfg.get("sample_steps"):
        opts = replace(opts, steps=int(mcfg["sample_steps"]))
    if opts.guidance is None and mcfg.get("sample_guidance") is not None:
        opts = replace(opts, guidance=float(mcfg["sample_guidance"]))
    prompts = list(prompts) or loaded.artifact.sample_prompts()
    # benchmark templates ("cat {} stone") take the run's own relation token
    token = loaded.artifact.token or DEFAULT_TEMPLATE_TOKEN
    prompts = [p.format(token) if "{}" in p else p for p in prompts]
    if not prompts:
        raise ConfigError("relgen.generate: give prompt=... (or prompts=[...], or relation=<benchmark relation>)")
    for prompt in prompts_missing_token(prompts, loaded.artifact.token):
        print(f"relgen: warning: prompt {prompt!r} does not contain the run's token {token}; it renders without "
              "what the run learnt", file=sys.stderr)
    print(f"relgen: loading backbone {loaded.meta['backbone'].get('name')} and the {loaded.method} artifact "
          f"of {loaded.export_dir}", file=sys.stderr, flush=True)
    backbone = loaded.load_backbone(**(backbone_overrides or {}))
    pipe = backbone.pipeline(opts.scheduler)
    loaded.apply(pipe)
    out = _output_folder(run_dir, out_dir)
    title = f"{loaded.method} · {backbone.name} · {Path(run_dir).name}"

    spec = loaded.artifact.grid_columns(pipe, prompts, opts, backbone.cfg, progress=progress)
    files: list[Path] = []
    if spec is not None:  # rows = prompt x seed, columns = the artifact's conditions
        kind = spec.kind if kind == "prompts" else f"{kind}-{spec.kind}"
        for p, prompt in enumerate(prompts):
            for c, folder_name in enumerate(spec.folders):
                folder = out / slug(prompt) / folder_name
                folder.mkdir(parents=True, exist_ok=True)
                for i, img in enumerate(spec.cells[p][c]):
                    _save_png(img, folder / f"{i:04d}.png")
                    files.append(folder / f"{i:04d}.png")
        image = columns_grid(spec, prompts, opts.seed, title)
    else:
        rows = render(pipe, loaded.artifact, prompts, opts, backbone.cfg, progress=progress)
        for prompt, images in zip(prompts, rows):
            folder = out / slug(prompt)
            folder.mkdir(parents=True, exist_ok=True)
            for i, img in enumerate(images):
                _save_png(img, folder / f"{i:04d}.png")
                files.append(folder / f"{i:04d}.png")
        image = prompt_grid(rows, prompts, opts.seed, title)
    grid_path = out / grid_file_name(loaded.meta, kind)
    _save_png(image, grid_path)
    record = {
        "run_dir": str(run_dir), "export": str(loaded.export_dir), "method": loaded.method,
        "backbone": loaded.meta["backbone"].get("name"), "prompts": prompts,
        "seeds": [opts.seed + i for i in range(opts.num_images)],
        "settings": {**asdict(opts), "steps": opts.steps or backbone.cfg.inference_steps,
                     "guidance": opts.guidance if opts.guidance is not None else backbone.cfg.guidance_scale,
                     "scheduler": opts.scheduler or backbone.cfg.inference_scheduler,
                     "height": opts.height or backbone.cfg.resolution,
                     "width": opts.width or backbone.cfg.resolution},
        "grid": grid_path.name, "images": [str(f.relative_to(out)) for f in files],
        "command": command, "relgen_version": relgen.__version__,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json(out / "generation.json", record, "generation record", newline=False, default=str)
    return [grid_path]


def __getattr__(name: str):
    """``main``, ``OPTIONS``, ``USAGE``: the command line's names (:mod:`relgen.generate.cli`), read on
    first use, so the console script ``relgen-generate = "relgen.generate:main"`` resolves; nothing in
    this library uses them."""
    if name in ("main", "OPTIONS", "USAGE"):
        return getattr(importlib.import_module("relgen.generate.cli"), name)
    raise AttributeError(f"module 'relgen.generate' has no attribute {name!r}")
