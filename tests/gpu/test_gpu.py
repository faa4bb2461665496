"""Paths that only exist on an accelerator: fp16/bf16 mixed precision and SDXL's VAE upcast.

Run with ``pytest -m gpu`` on a machine with CUDA; deselected by default.
"""

import pytest
import torch

from relgen.testing import compose

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA accelerator")]


@pytest.mark.parametrize("precision,dtype", [("fp16", "float16"), ("bf16", "bfloat16")])
def test_mixed_precision_keeps_trainable_rows_fp32(tmp_path, precision, dtype):
    from relgen.run import run_training
    from relgen.train import checkpoint as ckpt

    cfg = compose("method=textual_inversion", "backbone=tiny_sdxl", "dataset=shapes_reversion", "trainer=debug",
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


def test_adamw8bit_trains_and_resumes_bitwise_on_cuda(tmp_path):
    """bitsandbytes' 8-bit AdamW: 4 steps straight == 2 steps, resume, 2 steps."""
    pytest.importorskip("bitsandbytes")
    import shutil

    from safetensors.torch import load_file

    from relgen.run import run_training

    args = ["method=textual_inversion", "backbone=tiny_sd15", "dataset=shapes_reversion", "trainer=debug",
            "method.batch_size=1", "method.grad_accum=1", "trainer.sample_at_end=false", "method.optimizer=adamw8bit",
            "method.max_steps=4", "trainer.max_steps=null", "trainer.checkpoint_every=2"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_training(compose(*args), straight) == 0
    assert run_training(compose(*args), resumed) == 0
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "export")
    assert run_training(compose(*args, "resume=latest"), resumed) == 0
    a, b = (load_file(str(p / "export" / "textual_inversion-R.safetensors"))["<R>"] for p in (straight, resumed))
    assert torch.equal(a, b)
