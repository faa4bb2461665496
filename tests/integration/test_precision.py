"""Half-precision frozen modules end to end: training, the final sample grid, relgen.generate.

``backbone.dtype`` sets the frozen text encoders' and UNet's weights; the VAE keeps
``backbone.vae_dtype`` (float32), so the UNet's latents must be cast before decoding.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from relgen.testing import short_run

METHODS = {  # method -> the tiny backbone of its paper's structure, its synthetic dataset, what keeps it short
    "textual_inversion": ("tiny_sd15", "dataset=shapes_reversion"),
    "reversion": ("tiny_sd15", "dataset=shapes_reversion"),
    "rrnet": ("tiny_sd21", "dataset=shapes_rrnet"),
    "relationbooth": ("tiny_sdxl", "dataset=shapes_dreamrelation", "method.cal_max_side_fraction=0.5"),
}
# token methods export no sample prompts; the others render their own (ARB/BRA, dataset items)
PROMPTS = {"textual_inversion": ["red circle <R> blue square"], "reversion": ["red circle <R> blue square"]}


def _check_run(run, method: str, dtype: torch.dtype) -> None:
    import relgen
    from relgen.generate import GenerationOptions, generate_from_run

    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["loss"])
    grid = np.asarray(Image.open(run / "samples" / "final.png").convert("RGB"))
    assert grid.std() > 0
    loaded = relgen.load(run)
    backbone = loaded.load_backbone()
    assert backbone.unet.dtype == dtype and backbone.slots[0].encoder.dtype == dtype
    assert backbone.vae.dtype == torch.float32
    (path,) = generate_from_run(str(run), PROMPTS.get(method, []), GenerationOptions(num_images=1, steps=2))
    record = json.loads((path.parent / "generation.json").read_text())
    image = np.asarray(Image.open(path.parent / record["images"][0]))
    assert image.shape[-1] == 3 and np.isfinite(image).all() and image.std() > 0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bfloat16_frozen_modules_train_sample_and_generate(method, tmp_path):
    backbone, *extra = METHODS[method]
    run = short_run(tmp_path / method, f"method={method}", f"backbone={backbone}", "backbone.dtype=bfloat16",
                    "trainer.sample_at_end=true", "method.sample_steps=2", *extra)
    _check_run(run, method, torch.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_float16_frozen_modules_train_sample_and_generate(method, tmp_path):
    backbone, *extra = METHODS[method]
    run = short_run(tmp_path / method, f"method={method}", f"backbone={backbone}", "backbone.dtype=float16",
                    "trainer.sample_at_end=true", "method.sample_steps=2", *extra)
    _check_run(run, method, torch.float16)


def test_float16_sdxl_vae_decodes_in_float32_when_its_config_asks():
    """diffusers' SDXL pipeline upcasts a float16 VAE with ``force_upcast``; so does our decode."""
    from relgen.generate import decode_latents
    from relgen.testing import load_tiny

    backbone = load_tiny("tiny_sdxl", dtype="bfloat16", vae_dtype="float16")
    assert backbone.vae.config.force_upcast
    pipe = backbone.pipeline()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16)
    seen = []
    hook = backbone.vae.decoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    (image,) = decode_latents(pipe, latents)
    hook.remove()
    assert seen == [torch.float32] and backbone.vae.dtype == torch.float16  # upcast for the decode only
    assert image.size == (64, 64)
