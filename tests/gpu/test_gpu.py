"""Paths that only exist on an accelerator: fp16/bf16 mixed precision and SDXL's VAE upcast.

Run with ``pytest -m gpu`` on a machine with CUDA; deselected by default.
"""

import pytest
import torch

from conftest import compose

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA accelerator")]


@pytest.mark.parametrize("precision,dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_mixed_precision_keeps_trainable_rows_fp32(tmp_path, precision, dtype):
    from relgen.run import run_training
    from relgen.train import checkpoint as ckpt

    cfg = compose("method=textual_inversion", "backbone=tiny_sdxl", "trainer=debug",
                  f"trainer.mixed_precision={precision}", f"backbone.dtype={dtype}")
    assert run_training(cfg, tmp_path) == 0
    state = ckpt.load_checkpoint(ckpt.checkpoint_dirs(tmp_path)[-1])
    for key in ("rows.clip_l", "rows.clip_g"):
        assert state["method_state"][key].dtype == torch.float32
        assert torch.isfinite(state["method_state"][key]).all()


def test_sdxl_vae_stays_float32_with_fp16_modules():
    from relgen.backbones.loading import load_backbone

    cfg = compose("backbone=tiny_sdxl", "backbone.dtype=float16").backbone
    bb = load_backbone(cfg, device=torch.device("cuda"))
    assert bb.unet.dtype == torch.float16 and bb.vae.dtype == torch.float32
    pixels = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
    dist = bb.encode_latent_dist(pixels)
    assert torch.isfinite(dist).all() and dist.dtype == torch.float32
