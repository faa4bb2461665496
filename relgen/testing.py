"""What a method plugin needs to test itself, importable from the installed package.

The contract every built-in method passes, run on a plugin's method in one line
(:func:`check_method`: dry-run checks, an exact resume, export loading and generation)::

    from relgen.testing import check_method

    @pytest.mark.parametrize("backbone", ["tiny_sd15", "tiny_sdxl"])
    def test_contract(tmp_path, backbone):
        check_method(tmp_path, "method=myrel", f"backbone={backbone}", "dataset=shapes_reversion")

The pieces it is built from, for a plugin's own tests::

    from relgen.testing import compose, load_tiny, synthetic_data, short_run

    backbone = load_tiny("tiny_sd15")                   # seeded random weights, SD 1.5 structure
    data = synthetic_data("shapes_reversion")           # the synthetic dataset, read and checked
    # 2 steps of the real loop, in this process, on a named tiny backbone and dataset
    run = short_run(tmp_path / "run", "method=myrel", "backbone=tiny_sd15", "dataset=shapes_reversion")

Everything runs offline on a CPU in seconds: tiny backbones are built from config once per
cache folder (``$RELGEN_CACHE``), synthetic datasets are written once by content. Point
``RELGEN_CACHE`` at a temporary folder in your test session so nothing lands in ``~/.cache``,
and set ``HF_HUB_OFFLINE=1`` so nothing is looked up on the hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from relgen.api import load
from relgen.config import compose_run
from relgen.data.registry import open_dataset
from relgen.run import run_training

#: Overrides of :func:`short_run`: two optimizer steps, no progress bar or TensorBoard, no
#: sample grid (pass ``trainer.sample_at_end=true`` to exercise generation too).
SHORT_RUN = ("trainer=debug", "trainer.sample_every=null", "trainer.sample_at_end=false")


def compose(*overrides: str):
    """The run config Hydra composes for these command-line overrides (``python -m relgen ...``)."""

    return compose_run(*overrides)


def load_tiny(name: str = "tiny_sd15", **overrides: Any):
    """A freshly loaded tiny backbone (``tiny_sd15``, ``tiny_sd21``, ``tiny_sdxl``).

    Methods add tokens and adapters to the backbone they are given, so load one per test.
    ``overrides`` set backbone fields, e.g. ``load_tiny("tiny_sd21", prediction_type="epsilon")``
    or ``dtype="bfloat16"``.
    """
    from omegaconf import OmegaConf

    from relgen.backbones.loading import load_backbone

    cfg = compose(f"backbone={name}").backbone
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return load_backbone(cfg)


def synthetic_data(name: str = "shapes_reversion", *overrides: str):
    """A synthetic dataset (``shapes_reversion``, ``shapes_rrnet``, ``shapes_dreamrelation``, the
    ``relworld_*`` sets) written in its official layout, read and validated by its reader: the
    object a method's ``__init__`` receives as ``data``. ``overrides`` are ``dataset.*`` ones."""

    cfg = compose(f"dataset={name}", *overrides)
    return open_dataset(cfg.dataset, cfg.cache_dir).load()


def short_run(run_dir, *overrides: str, steps: Optional[int] = None) -> Path:
    """Train in this process through the real loop (:func:`relgen.run.run_training`).

    Uses :data:`SHORT_RUN` (two steps, no sample grids) followed by ``overrides``, so
    ``short_run(path, "method=myrel", "trainer.sample_at_end=true")`` also renders the final
    grid. Name the backbone and dataset (``"backbone=tiny_sd15", "dataset=shapes_reversion"``):
    without them a run takes its method's defaults, for the built-in methods the pretrained
    relworld model and its data. Returns the run folder, which holds ``export/``,
    ``checkpoints/``, ``metrics.csv`` and ``summary.json``.
    """

    extra = (f"trainer.max_steps={steps}",) if steps is not None else ()
    cfg = compose(*SHORT_RUN, *extra, *overrides)
    code = run_training(cfg, str(run_dir))
    if code != 0:
        raise RuntimeError(f"relgen run in {run_dir} returned {code}")
    return Path(run_dir)


def evaluation_run(root, prompts: dict) -> Path:
    """A finished debug run to evaluate: textual inversion on ``tiny_sd15`` and ``shapes_reversion``
    in ``root/run``, with ``prompts`` (a prompt file's JSON object) written to ``root/prompts.json``.
    Returns ``root``."""
    import json

    root = Path(root)
    code = run_training(compose("backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
                                "trainer.sample_at_end=false"), str(root / "run"))
    if code != 0:
        raise RuntimeError(f"relgen run in {root / 'run'} returned {code}")
    (root / "prompts.json").write_text(json.dumps(prompts))
    return root


def write_single_file(path, name: str = "tiny_sd15", size: str = "tiny", v_pred_marker: bool = False,
                      metadata: Optional[dict] = None, dtype=None) -> Path:
    """Seeded random weights of backbone ``name`` (``tiny_sd15``, ``tiny_sd21``, ``tiny_sdxl``) written
    as one original-layout checkpoint at ``path`` (``.safetensors`` or ``.ckpt``), as model sites
    distribute them. Returns the diffusers folder of the same weights (``<path>.diffusers``), whose
    configs a tiny file needs (``backbone.single_file_config=``); ``size="full"`` writes the published
    architectures, which the configs shipped with relgen read. ``v_pred_marker`` and ``metadata``
    record a prediction type the way v-prediction files do.

    The tiny SDXL's second encoder gets its own width here (48, not 32): the single-file reader tells
    the two CLIP encoders apart by width, as the published ones (768 and 1280) differ."""
    import tempfile

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModelWithProjection

    from relgen.backbones.original_layout import save_original_checkpoint
    from relgen.backbones.tiny import _UNET, build_tiny_components

    cfg = compose(f"backbone={name}").backbone
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        comps = build_tiny_components(cfg.tiny, cfg.prediction_type, cfg.tiny_seed, Path(tmp), size=size)
    comps.pop("train_scheduler")
    if cfg.family == "sdxl" and size == "tiny":
        text = comps["text_encoder_2"].config.to_dict()
        text.update(hidden_size=48, projection_dim=48)
        comps["text_encoder_2"] = CLIPTextModelWithProjection(type(comps["text_encoder_2"].config)(**text))
        unet = dict(_UNET[("tiny", "sdxl")], cross_attention_dim=32 + 48,
                    projection_class_embeddings_input_dim=6 * 8 + 48)  # 6 time ids x 8 + the pooled width
        comps["unet"] = UNet2DConditionModel(**unet)
    if cfg.family == "sdxl":
        pipe = StableDiffusionXLPipeline(**comps)
    else:
        pipe = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    folder = path.with_name(path.name + ".diffusers")
    pipe.save_pretrained(folder, safe_serialization=True)
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if cfg.family == "sdxl" else [])
    save_original_checkpoint(path, cfg.architecture, pipe.unet, pipe.vae, encoders, v_pred_marker=v_pred_marker,
                             metadata=metadata, dtype=dtype)
    return folder


def run_relgen(*args: str, module: str = "relgen", timeout: int = 900, env: Optional[dict] = None,
               cwd=None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> args...`` in a subprocess; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd)


def same_export(a, b) -> None:
    """Assert that two runs exported the same tensors (every ``.safetensors`` of ``export/``)."""
    import torch
    from safetensors.torch import load_file

    files = sorted(p.name for p in (Path(a) / "export").glob("*.safetensors"))
    assert files and files == sorted(p.name for p in (Path(b) / "export").glob("*.safetensors")), files
    for name in files:
        x, y = load_file(str(Path(a) / "export" / name)), load_file(str(Path(b) / "export" / name))
        assert x.keys() == y.keys(), name
        for key in x:
            assert torch.equal(x[key], y[key]), f"{name}: {key} differs"


#: The prompt :func:`check_method` renders when the artifact has no sample prompts of its own.
CONTRACT_PROMPT = "a red circle {} a blue square"


def check_method(root, *overrides: str) -> dict[str, Path]:
    """The method contract, on the method, backbone and dataset ``overrides`` name.

    1. A dry run passes every check that needs no weights (the config checks, the method's
       :meth:`~relgen.plugin.Method.check_config` and ``check_data``) and leaves nothing behind.
    2. Resume is exact: a run stopped after step 1 and resumed to step 2 exports the same
       tensors as a straight two-step run (checkpoints hold the method's ``state_dict``).
    3. The export loads (``relgen.load``), applies to the backbone's diffusers pipeline and
       renders through :func:`relgen.generate.generate_from_run` (one image, two steps).

    Returns ``{"run": the straight run, "resumed": the resumed run, "grid": the rendered grid}``.
    """
    from relgen.generate import GenerationOptions, generate_from_run

    root = Path(root)
    dry = root / "dry"
    code = run_training(compose(*SHORT_RUN, "dry_run=true", *overrides), str(dry))
    assert code == 0 and not dry.exists(), f"dry run returned {code} or left {dry} behind"
    every = ("trainer.checkpoint_every=1", *overrides)
    straight = short_run(root / "straight", *every, steps=2)
    resumed = short_run(root / "resumed", *every, steps=1)
    short_run(resumed, *every, "resume=latest", steps=2)
    same_export(straight, resumed)
    prompts = load(straight).artifact.sample_prompts()[:1] or [CONTRACT_PROMPT]
    grid = generate_from_run(str(straight), prompts, GenerationOptions(num_images=1, steps=2, batch_size=1))[0]
    assert grid.is_file(), grid
    return {"run": straight, "resumed": resumed, "grid": grid}


__all__ = ["CONTRACT_PROMPT", "SHORT_RUN", "check_method", "compose", "load_tiny", "run_relgen", "same_export",
           "short_run", "synthetic_data", "write_single_file"]
