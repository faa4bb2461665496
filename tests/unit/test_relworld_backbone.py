"""The relworld micro backbone: its tokenizer, its size, pkg:// loading, and the shipped model."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from relgen.relworld import model as rb
from relgen.backbones.loading import load_backbone
from relgen.relworld import world as rw
from relgen.data._tiny_tokenizer import bytes_to_unicode
from relgen.errors import ConfigError, RelgenError
from relgen.testing import compose

CAPTIONS = [rw.pretraining_item(rw.WorldSpec(), 0, i)[1] for i in range(400)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    rb.write_clip_tokenizer(folder, rb.train_bpe_merges(CAPTIONS))
    return folder


def test_world_tokenizer_is_clip_format(tokenizer_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text(encoding="utf-8"))
    base = list(bytes_to_unicode().values())
    assert [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1])][:512] == base + [c + "</w>" for c in base]
    assert vocab["a</w>"] == 320  # as in CLIP's own vocabulary
    assert (tokenizer_dir / "merges.txt").read_text(encoding="utf-8").startswith("#version: 0.2\n")
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id]) == ["<|startoftext|>", "<|endoftext|>"]
    assert tok.pad_token_id == tok.eos_token_id and tok.model_max_length == 77
    # every word of the world's captions is one token; the held-out relation's word is not
    for word in rw.words():
        assert tok.tokenize(word) == [f"{word}</w>"], word
    assert len(tok.tokenize("inside")) > 1
    ids = tok("A photo of a Red circle ON a blue square").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "red</w>",
                                              "circle</w>", "on</w>", "a</w>", "blue</w>", "square</w>",
                                              "<|endoftext|>"]
    assert len(tok("a red circle", padding="max_length", max_length=77).input_ids) == 77


@pytest.fixture(scope="module")
def fake_package(tmp_path_factory, tokenizer_dir):
    """A package 'relworld_fake_pkg' holding a freshly initialised model in 'model/'."""
    from transformers import CLIPTokenizer

    root = tmp_path_factory.mktemp("pkgroot")
    pkg = root / "relworld_fake_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    tok = CLIPTokenizer.from_pretrained(tokenizer_dir)
    rb.save_pipeline(pkg / "model", tokenizer_dir, rb.build_text_encoder(tok), rb.build_unet(), rb.build_vae(),
                     zero_snr=True)
    sys.path.insert(0, str(root))
    yield pkg
    sys.path.remove(str(root))
    sys.modules.pop("relworld_fake_pkg", None)


def test_weights_fit_the_budget(fake_package):
    assert rb.weights_size(fake_package / "model") <= 50e6
    assert rb.is_trained(fake_package / "model")
    assert not rb.is_trained(fake_package)
    assert (fake_package / "model" / "tokenizer" / "vocab.json").is_file()
    assert not (fake_package / "model" / "tokenizer" / "tokenizer.json").exists()


def test_pkg_uri_loads_through_the_backbone_loader(fake_package):
    cfg = compose("backbone=relworld", "backbone.pretrained=pkg://relworld_fake_pkg/model").backbone
    backbone = load_backbone(cfg)
    assert backbone.identity.startswith("pkg://relworld_fake_pkg/model@") and len(backbone.identity.split("@")[1]) == 12
    assert backbone.vae_scale == 4 and backbone.cond_width == rb.TEXT_CONFIG["hidden_size"]
    assert backbone.slots[0].pad_id == backbone.slots[0].eos_id
    cond = backbone.encode_prompts(["a red circle above a blue square"])
    assert cond.hidden.shape == (1, 77, 128) and int(cond.eot[0]) == 8  # BOS + 7 words
    latents = torch.zeros(1, 8, 16, 16)
    out = backbone.unet_forward(latents, torch.tensor([10]), cond)
    assert out.shape == latents.shape
    images = backbone.pipeline()(["a red circle above a blue square"], height=64, width=64, num_inference_steps=2,
                                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()


def test_pkg_uri_errors_are_clear(fake_package):
    cfg = compose("backbone=relworld", "backbone.pretrained=pkg://relworld_fake_pkg/nothing_here").backbone
    with pytest.raises(RelgenError, match="no diffusers folder"):
        load_backbone(cfg)
    cfg = compose("backbone=relworld", "backbone.pretrained=pkg://relworld_no_such_pkg/model").backbone
    with pytest.raises(ConfigError, match="not installed"):
        load_backbone(cfg)


def test_backbone_config_composes():
    cfg = compose("backbone=relworld").backbone
    assert (cfg.name, cfg.family, cfg.pretrained, cfg.resolution, cfg.prediction_type) == (
        "relworld", "sd", rb.PRETRAINED_URI, 64, "v_prediction")


@pytest.mark.skipif(not rb.is_trained(), reason="relgen/relworld/weights/ is not built yet: run "
                    "benchmarks/relworld/pretrain.py")
def test_shipped_model_loads():
    backbone = load_backbone(compose("backbone=relworld").backbone)
    assert rb.weights_size(rb.shipped_model_folder()) <= 50e6
    assert backbone.unet.config.sample_size == 16 and backbone.resolution == 64


def test_scheduler_config_is_sd15_rescaled_to_zero_terminal_snr(fake_package, tmp_path, tokenizer_dir):
    config = json.loads((fake_package / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDIMScheduler"
    assert (config["beta_start"], config["beta_end"], config["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert (config["rescale_betas_zero_snr"], config["prediction_type"], config["timestep_spacing"]) == (
        True, "v_prediction", "trailing")
    assert (config["clip_sample"], config["set_alpha_to_one"], config["steps_offset"]) == (False, False, 1)
    from transformers import CLIPTokenizer  # without zero_snr: SD 1.5's own PNDM scheduler config

    encoder = rb.build_text_encoder(CLIPTokenizer.from_pretrained(tokenizer_dir))
    rb.save_pipeline(tmp_path / "sd15", tokenizer_dir, encoder, rb.build_unet(), rb.build_vae())
    config = json.loads((tmp_path / "sd15" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "PNDMScheduler" and config["prediction_type"] == "epsilon"
    assert (config["clip_sample"], config["set_alpha_to_one"], config["skip_prk_steps"]) == (False, False, True)


def test_zero_snr_model_trains_and_samples_from_pure_noise(fake_package):
    """The shipped configuration: the last training timestep holds no trace of the image (on SD
    1.5's own schedule 0.068 of it survives), and the sampler starts at that timestep."""
    backbone = load_backbone(compose("backbone=relworld", "backbone.pretrained=pkg://relworld_fake_pkg/model").backbone)
    x0, noise = torch.full((1, 8, 16, 16), 3.0), torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999])
    assert torch.equal(backbone.add_noise(x0, noise, t), noise)  # SNR(T) = 0
    assert torch.allclose(backbone.training_target(x0, noise, t), -x0)  # v = sqrt(a) eps - sqrt(1 - a) x0 at a = 0
    sched = backbone.inference_scheduler()
    sched.set_timesteps(25)
    assert sched.timesteps[:3].tolist() == [999, 959, 919]  # "trailing" spacing
    sd15 = type(backbone.noise_scheduler).from_config(
        {k: v for k, v in rb.SCHEDULER_CONFIG.items() if k not in ("skip_prk_steps", "set_alpha_to_one")})
    leak = sd15.add_noise(x0, noise, t) - noise * (1 - 0.00466) ** 0.5
    assert torch.allclose(leak, torch.full_like(x0, 3.0 * 0.068265), atol=2e-4)
